"""Named hard-view paths for method configs: the registry of augmentations and their "+"-joined compositions.

A method config lists paths such as "cut_occlude+cutout"; `check_path` validates one when the method is built
(unknown names or options fail then, not mid-run) and `apply_path` turns easy-view images (N, 3, H, W) into the
hard view, feeding each component the batch inputs it declares (joints (N, K, 2) input px, valid (N, K),
teacher peaks (N, K)). Size options are fractions of the crop's shorter side min(H, W), never pixels (see the
package docstring): e.g. {"cutout": {"half_size_frac": [0.05, 0.1]}}; the former pixel options `half_size` and
`jitter_std` are rejected at construction with a pointer to their replacements, and so is a half_size_frac outside
0 ≤ lo ≤ hi ≤ 1 (ValueError).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from core.registry import Registry
from training.ssl.augment._sampling import check_half_size_frac
from training.ssl.augment.colour import photometric
from training.ssl.augment.masking import adaptive_keypoint_mask, cutout, joint_cutout
from training.ssl.augment.mixing import cut_occlude, cutmix, keypoint_mix, mixup


class AugmentSpec(NamedTuple):
    """A registered augmentation and the batch inputs it needs besides images and the generator."""

    fn: Callable[..., Any]
    needs: tuple[str, ...]  # subset of ("joints", "valid", "peaks")


def _identity(images: Tensor, *, generator: torch.Generator) -> Tensor:
    """The "none" path: the easy view itself (only the shared affine makes it hard)."""
    return images


# Options that used to be in pixels, and what replaced them (fractions of min(H, W); px / 192 at 256×192).
_RENAMED = {"half_size": "half_size_frac", "jitter_std": "jitter_frac"}

AUGMENTS: Registry[AugmentSpec] = Registry("hard-view augmentation")
AUGMENTS.register("none")(AugmentSpec(_identity, ()))
AUGMENTS.register("joint_cutout")(AugmentSpec(joint_cutout, ("joints", "valid")))
AUGMENTS.register("cut_occlude")(AugmentSpec(cut_occlude, ("joints", "valid")))
AUGMENTS.register("keypoint_mix")(AugmentSpec(keypoint_mix, ("joints", "valid")))
AUGMENTS.register("adaptive_mask")(AugmentSpec(adaptive_keypoint_mask, ("joints", "peaks", "valid")))
AUGMENTS.register("cutout")(AugmentSpec(cutout, ()))
AUGMENTS.register("cutmix")(AugmentSpec(cutmix, ()))
AUGMENTS.register("mixup")(AugmentSpec(mixup, ()))
AUGMENTS.register("photometric")(AugmentSpec(photometric, ()))  # mean and std are required path kwargs


def _options(spec: AugmentSpec) -> tuple[set[str], set[str]]:
    """(all, required) parameters a path's kwargs may/must give: everything but images, the batch inputs in
    `spec.needs` and the generator."""
    params = list(inspect.signature(spec.fn).parameters.values())[1:]
    params = [p for p in params if p.name not in spec.needs and p.name != "generator"]
    return {p.name for p in params}, {p.name for p in params if p.default is p.empty}


@dataclass(frozen=True)
class AugmentPath:
    """One hard-view path: registry names joined by "+" applied in order (MultiAugs: JOCO = "cut_occlude+cutout",
    JCCM = "joint_cutout+cutmix") and per-component keyword overrides, e.g.
    AugmentPath("joint_cutout+cutmix", {"cutmix": {"holes": 2}}) or
    AugmentPath("joint_cutout", {"joint_cutout": {"half_size_frac": (0.05, 0.1), "jitter_frac": 0.05}}) (sizes
    as fractions of the crop's shorter side). Unknown names or options raise at construction.
    """

    name: str
    kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        components = self.components
        for component in self.kwargs:
            if component not in components:
                raise KeyError(f"kwargs for {component!r}, which is not in path {self.name!r}")
        for component in components:
            allowed, required = _options(AUGMENTS.get(component))
            given = set(self.kwargs.get(component, {}))
            if given - allowed or required - given:
                hints = [
                    f"{old!r} (pixels) is now {new!r}, a fraction of min(H, W) (px / 192 at 256×192)"
                    for old, new in _RENAMED.items()
                    if old in given and new in allowed
                ]
                raise TypeError(
                    f"{component}: unknown options {sorted(given - allowed)}, missing {sorted(required - given)}"
                    + "".join(f"; {hint}" for hint in hints)
                )
            if "half_size_frac" in given:
                check_half_size_frac(self.kwargs[component]["half_size_frac"])
        object.__setattr__(self, "kwargs", {c: dict(o) for c, o in self.kwargs.items()})

    def __hash__(self) -> int:
        return hash((self.name, repr(sorted(self.kwargs.items()))))

    @property
    def components(self) -> tuple[str, ...]:
        parts = tuple(part.strip() for part in self.name.split("+"))
        for part in parts:
            AUGMENTS.get(part)  # raises KeyError on unknown names
        return parts

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | AugmentPath) -> AugmentPath:
        """From a config entry: "cut_occlude+cutout" or {"name": ..., "kwargs": {component: {...}}}."""
        if isinstance(spec, AugmentPath):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        return cls(spec["name"], spec.get("kwargs", {}))


@functools.lru_cache(maxsize=64)
def _parse_name(name: str) -> AugmentPath:
    return AugmentPath(name)


def check_path(path: str | Mapping[str, Any] | AugmentPath) -> AugmentPath:
    """The validated AugmentPath of a config entry; raises KeyError (unknown name) or TypeError (bad options)."""
    return _parse_name(path) if isinstance(path, str) else AugmentPath.parse(path)


def apply_path(
    path: str | Mapping[str, Any] | AugmentPath,
    images: Tensor,
    joints: Tensor | None,
    valid: Tensor | None,
    peaks: Tensor | None,
    generator: torch.Generator,
) -> Tensor:
    """The hard view of `images` (N, 3, H, W) for one path (an AugmentPath or a config entry, see `check_path`);
    joints (N, K, 2) input px and peaks (N, K) are needed only by joint-based components (the same for every
    component: masks do not move joints)."""
    path = check_path(path)
    inputs = {"joints": joints, "valid": valid, "peaks": peaks}
    out = images
    for component in path.components:
        spec = AUGMENTS.get(component)
        args = [inputs[name] for name in spec.needs]
        if any(a is None for a, name in zip(args, spec.needs) if name != "valid"):
            raise ValueError(f"augmentation {component!r} needs {[n for n in spec.needs if n != 'valid']}")
        result = spec.fn(out, *args, generator=generator, **path.kwargs.get(component, {}))
        out = result[0] if isinstance(result, tuple) else result
    return out
