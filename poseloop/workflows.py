"""What the CLI commands do, as plain functions (testable without a shell)."""

from __future__ import annotations

import glob
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from serving.detection import PersonDetector

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "artifacts"
# the bundle served out of the box: COCO-17 output, measurably ahead of the LSP-14 bundle with detector boxes and
# level with it on tight boxes and whole images (docs/benchmarks.md, "COCO-17 v2 student"); the LSP-14 one stays
# for the SSL benchmark and LSP-schema users
DEFAULT_BUNDLE = "coco17-mbv2-128x96"


def default_model_path() -> Path | None:
    """$POSELOOP_MODEL, else the newest version of the DEFAULT_BUNDLE, else the newest of any bundle
    (artifacts/<name>/v<N>/model.onnx), else None."""
    env = os.environ.get("POSELOOP_MODEL")
    if env:
        return Path(env)
    bundled = sorted(
        BUNDLED_MODEL_DIR.glob("*/v*/model.onnx"),
        key=lambda p: (p.parent.parent.name == DEFAULT_BUNDLE, p.parent.parent.name, int(p.parent.name[1:] or 0)),
    )
    return bundled[-1] if bundled else None


IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".webp")  # the formats the API decodes (core.inputs)
VIDEO_SUFFIXES = (".avi", ".mkv", ".mov", ".mp4")


class SourceError(Exception):
    """A mistake in what `poseloop predict` was asked to read or write: one line on stderr, exit status 2."""


@dataclass(frozen=True)
class Input:
    """One image to pose: an image file, or frame `frame` of a video (then `rgb` holds the decoded frame)."""

    path: Path
    name: str  # the overlay's name without suffix: relative path in a folder, file stem, <video stem>_<frame>
    frame: int | None = None
    rgb: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Sources:
    """What SOURCE arguments name: the inputs (lazy; videos decode as they go), how many (None = unknown)."""

    inputs: Iterator[Input]
    total: int | None
    single_file: bool  # exactly one image file: today's single-image output


def resolve_sources(sources: list[str], recursive: bool = False, every: int = 1, limit: int | None = None) -> Sources:
    """SOURCE arguments → inputs, checked before any model loads (SourceError for a user mistake).

    Each argument is an image file, a folder (its image files, sorted; subfolders with `recursive`), a glob
    pattern expanded here, so a quoted pattern works as well as one the shell expanded (its image and video
    matches, sorted; `**` spans folders), or a video (.avi/.mkv/.mov/.mp4, opened with cv2.VideoCapture). `every`:
    every Nth file of a folder or glob, every Nth frame of a video; `limit`: the first M inputs in all.
    """
    parts: list[tuple[Iterator[Input], int | None]] = []
    single = len(sources) == 1
    for text in sources:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in (path.rglob("*") if recursive else path.iterdir()) if _is_image(p))
            if not files:
                hint = "" if recursive else " (--recursive includes its subfolders)"
                raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {text}{hint}")
            parts.append(_file_inputs(files[::every], path))
            single = False
        elif path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            parts.append(_video_inputs(path, every))
            single = False
        elif path.is_file():
            parts.append(_file_inputs([path], None))
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            found = [p for p in matches if p.is_file() and p.suffix.lower() in (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES)]
            if not found:
                raise SourceError(f"no image or video matches {text}")
            parts.extend(_file_inputs([p], None) if _is_image(p) else _video_inputs(p, every) for p in found[::every])
            single = False
        else:
            raise SourceError(f"no such file or directory: {text}")
    counts = [n for _, n in parts]
    total = None if None in counts else sum(n for n in counts if n is not None)
    if limit is not None and total is not None:
        total = min(total, limit)
    inputs = itertools.chain.from_iterable(it for it, _ in parts)
    return Sources(itertools.islice(inputs, limit), total, single)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _file_inputs(files: list[Path], root: Path | None) -> tuple[Iterator[Input], int]:
    names = [(p.relative_to(root).with_suffix("") if root else Path(p.stem)).as_posix() for p in files]
    return (Input(p, n) for p, n in zip(files, names)), len(files)


def _video_inputs(video: Path, every: int) -> tuple[Iterator[Input], int | None]:
    """Every `every`th frame (0, N, 2N, ...) of `video`, decoded as it is read; SourceError if it cannot be read."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened() or not capture.grab():
        capture.release()
        raise SourceError(f"cannot read video {video} (OpenCV opens no frame of it)")
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))

    def frames_of() -> Iterator[Input]:
        index = 0
        try:
            while True:  # frame `index` is grabbed; grab() skips a frame without decoding it
                if index % every == 0:
                    ok, bgr = capture.retrieve()
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok and bgr is not None else None
                    yield Input(video, f"{video.stem}_{index:06d}", index, rgb)
                index += 1
                if not capture.grab():
                    return
        finally:
            capture.release()

    return frames_of(), -(-frames // every) if frames > 0 else None


class Predictor:
    """The API's pipeline built once for many images: one ONNX Runtime session, the detector loaded on first need.

    Options default to settings.inference (POSELOOP_* variables) and are checked by the API's own rules
    (serving.routes.pose): InputError naming the option. detector: the detector ONNX; None = settings'
    `inference.detector_path`, "" = no detector (the whole image is one person).
    """

    def __init__(
        self,
        model: Path | None = None,
        flip_test: bool | None = None,
        *,
        detector: Path | str | None = None,
        det_threshold: float | None = None,
        max_persons: int | None = None,
        kpt_threshold: float | None = None,
    ) -> None:
        from continual.settings import load_settings
        from serving.backends.onnxruntime import OnnxRuntimeBackend
        from serving.routes.pose import RequestOptions, body_options, resolve_options

        self.settings = settings = load_settings()
        sent = {"max_persons": max_persons, "det_threshold": det_threshold, "kpt_threshold": kpt_threshold}
        sent["flip"] = flip_test
        chosen = body_options({k: v for k, v in sent.items() if v is not None}, strict=False)  # InputError if bad
        self.applied = resolve_options(RequestOptions(), chosen, settings)
        model = model or default_model_path()
        if model is None or not Path(model).exists():
            raise SystemExit("no model: pass --model PATH.onnx or set POSELOOP_MODEL (train one with `poseloop train`)")
        self.detector_path = (
            settings.inference.detector_path if detector is None else (Path(detector) if detector else None)
        )
        self.backend = OnnxRuntimeBackend(model)
        self._detector: PersonDetector | None = None

    def decode(self, path: Path) -> np.ndarray:
        """An image file → H×W×3 RGB uint8, refused as the API refuses it (InputError: size, type, corrupt)."""
        from core.inputs import InputError, decode_image

        data = path.read_bytes()
        limit = self.settings.limits.max_image_bytes
        if len(data) > limit:
            raise InputError(413, "image_too_large", f"image is {len(data)} bytes, limit {limit}")
        return decode_image(data, self.settings.limits.max_pixels)

    def predict(self, rgb: np.ndarray, boxes: list[list[float]] | None = None) -> tuple[dict, list]:
        """(the /v1/pose JSON, the PersonPoses) for one RGB image; boxes [x, y, w, h] checked like the API's."""
        from core.inputs import parse_boxes
        from serving.pipeline import PosePipeline, to_json
        from serving.routes.pose import pipeline_options

        height, width = rgb.shape[:2]
        checked = parse_boxes(boxes or None, width, height, self.settings.limits.max_boxes)
        detector = self._person_detector() if checked is None else None  # boxes given: no detector needed
        pipeline = PosePipeline(self.backend, detector=detector)
        prepared = pipeline.prepare(rgb, checked, pipeline_options(self.applied))
        poses = pipeline.decode(self.backend.infer(prepared.crops), prepared) if prepared.persons else []
        result = to_json(poses, self.backend.metadata.version, self.applied.kpt_threshold, (width, height))
        result["image"] = {"width": width, "height": height, "id": None, "decoded_scale": 1.0}  # decoded in full
        result["boxes_from"] = prepared.source
        result["options"] = self.applied.model_dump()
        return result, poses

    def render(self, rgb: np.ndarray, poses: list, path: Path) -> None:
        """The skeleton overlay (valid keypoints only, as /v1/pose/render) as an image file at `path`."""
        import cv2

        from serving.render import render_poses

        overlay = render_poses(rgb, poses, self.backend.metadata.schema.skeleton, self.applied.kpt_threshold)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)):
            raise SourceError(f"cannot write the overlay {path}")

    def _person_detector(self) -> PersonDetector | None:
        if self.detector_path is None:
            return None
        if self._detector is None:
            from serving.backends import BackendLoadError
            from serving.backends.detector import embedded_detector

            inference = self.settings.inference
            try:
                self._detector = embedded_detector(self.detector_path, inference.ort_threads, inference.detector_iou)
            except BackendLoadError as err:
                raise SystemExit(
                    f"person detector: {err} (pass --detector PATH, or --detector '' for the whole image)"
                ) from None
        return self._detector


def predict_image(
    image: Path,
    boxes: list[list[float]] | None = None,
    model: Path | None = None,
    render: Path | None = None,
    flip_test: bool | None = None,
    *,
    detector: Path | str | None = None,
    det_threshold: float | None = None,
    max_persons: int | None = None,
    kpt_threshold: float | None = None,
) -> dict:
    """The /v1/pose answer for one image file, computed in this process (ONNX Runtime; no torch, no server).

    As the API: no boxes → the person detector finds the people (none found → `persons: []`); boxes given
    ([x, y, w, h] image pixels) → those, refused like the API's (core.inputs.parse_boxes: InputError for a box
    entirely outside the image, too small, too many); the image is refused like the API's too (InputError).
    Options as `Predictor`; `render`: write the overlay PNG there.
    """
    predictor = Predictor(
        model,
        flip_test,
        detector=detector,
        det_threshold=det_threshold,
        max_persons=max_persons,
        kpt_threshold=kpt_threshold,
    )
    return predict_file(predictor, Path(image), boxes, render)


def predict_file(
    predictor: Predictor, image: Path, boxes: list[list[float]] | None = None, render: Path | None = None
) -> dict:
    """`predict_image` with a built Predictor: the JSON of one image file (+ `render`: the overlay PNG's path)."""
    rgb = predictor.decode(image)
    result, poses = predictor.predict(rgb, boxes)
    if render:
        predictor.render(rgb, poses, Path(render))
        result["render"] = str(render)
    return result


@dataclass
class PredictSummary:
    """What a many-input run did: counts, and where it wrote (out: results.json, images.json; renders)."""

    images: int = 0
    persons: int = 0
    skipped: list[dict] = field(default_factory=list)
    out: str | None = None
    renders: str | None = None


def predict_many(
    sources: Sources,
    predictor: Predictor,
    out: Path | None = None,
    render_dir: Path | None = None,
    boxes: list[list[float]] | None = None,
    emit: Callable[[str], object] = print,
) -> PredictSummary:
    """Pose every input; a bad image is skipped with its reason and the run goes on.

    out = None: one JSON line per input to `emit` (the /v1/pose JSON plus `file`, `frame`; `image.id` is the
    input's number; a skipped input is {"file", "frame", "skipped": reason}). out = DIR: DIR/results.json, the
    COCO keypoints results ([{image_id, category_id 1, keypoints [x, y, score]*K, score, bbox [x, y, w, h]}];
    COCO's own format for a COCO-17 model) and DIR/images.json (COCO `images` {id, file_name, width, height,
    frame}, `categories` with the model's keypoints and 1-based skeleton, `skipped`: COCO().loadRes accepts it as
    the dataset). render_dir: overlays as <name>.png there. Progress bar on stderr for more than one input.
    """
    from tqdm import tqdm

    summary, images, results = PredictSummary(), [], []
    used: set[str] = set()  # overlay names taken
    bar = tqdm(sources.inputs, total=sources.total, unit="image", file=sys.stderr, disable=sources.total == 1)
    for image_id, item in enumerate(bar, start=1):
        entry: dict = {"id": image_id, "file_name": str(item.path)}
        entry |= {} if item.frame is None else {"frame": item.frame}
        posed = _pose_one(predictor, item, boxes)
        if isinstance(posed, str):
            summary.skipped.append(entry | {"reason": posed})
            if out is None:
                emit(json.dumps({"file": entry["file_name"], "frame": item.frame, "skipped": posed}))
            continue
        rgb, result, poses = posed
        summary.images += 1
        summary.persons += len(poses)
        if render_dir is not None:
            path = render_dir / f"{_unique(item.name, used)}.png"
            predictor.render(rgb, poses, path)
            result["render"] = str(path)
        if out is None:
            result["image"]["id"] = image_id
            emit(json.dumps({"file": entry["file_name"], "frame": item.frame} | result))
        else:
            images.append(entry | {"width": rgb.shape[1], "height": rgb.shape[0]})
            results.extend(coco_results(result, image_id))
    if out is not None:
        _write_coco(out, predictor, images, results, summary.skipped)
        summary.out = str(out)
    summary.renders = None if render_dir is None else str(render_dir)
    return summary


def _pose_one(
    predictor: Predictor, item: Input, boxes: list[list[float]] | None
) -> tuple[np.ndarray, dict, list] | str:
    """(image, /v1/pose JSON, poses), or why the input is skipped ("code: message" of the API's refusal)."""
    from core.inputs import InputError

    try:
        rgb = item.rgb if item.frame is not None else predictor.decode(item.path)
        if rgb is None:
            return f"undecodable_frame: frame {item.frame} of {item.path} could not be decoded"
        result, poses = predictor.predict(rgb, boxes)
    except InputError as err:
        return f"{err.code}: {err.message}"
    except OSError as err:
        return f"unreadable_file: {err}"
    return rgb, result, poses


def coco_results(result: dict, image_id: int) -> list[dict]:
    """One /v1/pose answer → COCO keypoint results: keypoints [x, y, score] per joint, score = pose score."""
    return [
        {
            "image_id": image_id,
            "category_id": 1,
            "keypoints": [round(v, 3) for k in person["keypoints"] for v in (k["x"], k["y"], k["score"])],
            "score": round(person["pose_score"], 5),
            "bbox": [round(v, 2) for v in person["box"]],
        }
        for person in result["persons"]
    ]


def _write_coco(out: Path, predictor: Predictor, images: list, results: list, skipped: list) -> None:
    from core.fileio import atomic_write_bytes

    schema = predictor.backend.metadata.schema
    category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(schema.keypoints)}
    category["skeleton"] = [[a + 1, b + 1] for a, b in schema.skeleton]  # COCO's skeleton is 1-based
    doc = {"model_version": predictor.backend.metadata.version, "schema": schema.name, "images": images}
    doc |= {"categories": [category], "annotations": [], "skipped": skipped}
    atomic_write_bytes(out / "results.json", json.dumps(results).encode())
    atomic_write_bytes(out / "images.json", json.dumps(doc, indent=1).encode())


def _unique(name: str, used: set[str]) -> str:
    """`name`, or name_2, name_3, ... when an earlier input of the run already has it (a.jpg and a.png)."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}_{n}"
    used.add(candidate)
    return candidate


def ensure_first_model(registry_dir: Path, model: Path | None = None) -> Path | None:
    """The ONNX to install into an empty registry (None when a version is already active).

    Order: `model`, $POSELOOP_MODEL / the bundled model, else a bootstrap model trained now (quick supervised run
    on the LSP training split; a few minutes on 2 CPU cores).
    """
    from models.registry import ModelRegistry

    if (Path(registry_dir) / "index.json").exists() and ModelRegistry(registry_dir).active() is not None:
        return None
    model = model or default_model_path()
    if model is not None:
        return Path(model)
    from training.checkpoints import export_checkpoint
    from training.config import load_config
    from training.engine import Trainer

    config_path = Path(__file__).resolve().parent.parent / "configs" / "quick.yaml"
    cfg = load_config(
        config_path,
        [
            "name=bootstrap",
            "optim.iterations=200",
            "optim.batch_size=16",
            "schedule.val_every=100",
            "schedule.checkpoint_every=50",
        ],
    )
    print(
        f"empty registry and no bundled model: training a bootstrap model ({cfg.optim.iterations} steps, "
        "a few minutes on CPU)",
        flush=True,
    )
    result = Trainer(cfg).fit()
    onnx_path = result.run_dir / "model.onnx"
    export_checkpoint(result.run_dir / "best.pt", onnx_path, version="bootstrap")
    return onnx_path
