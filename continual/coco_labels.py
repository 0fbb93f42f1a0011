"""A COCO keypoints JSON from people (a labeling tool's export, POST /v1/labeled) → checked labeled persons.

Strict, all-or-nothing: every problem found is collected and the document is refused with one 422 naming them
(`invalid_annotations`), so a half-understood export never becomes gate labels. What COCO itself marks as not a
usable person (iscrowd = 1, or no labeled keypoint) is skipped and reported, not an error.

Coordinates are COCO's: image pixels of the file as stored (keypoints x = column, y = row; boxes [x, y, w, h]
with the image spanning [0, W] × [0, H]); visibility 0 = not labeled, 1 = labeled occluded, 2 = visible.
Schema: the category's `keypoints` names must be the active model's schema or COCO-17 (mapped by joint name,
models.schema_map, when the records are built); without names the keypoint count decides (K of the model's
schema, else 17 = COCO-17).
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass, field

from core.inputs import InputError
from models.schemas import COCO17, get_schema

MAX_PROBLEMS = 10  # named in one 422 message (the count of the rest follows)
BOX_TOLERANCE_PX = 1.0  # labeling tools round boxes and keypoints at the image border
MIN_BOX_SIDE_PX = 2.0


@dataclass(frozen=True)
class LabeledPerson:
    """One annotated person: box (x, y, w, h) and K (x, y, v) keypoints in image pixels of its image."""

    box: tuple[float, float, float, float]
    keypoints: tuple[tuple[float, float, int], ...]
    annotation: str  # the document's annotation id, for messages


@dataclass(frozen=True)
class LabeledImageSpec:
    file_name: str  # the base name the image part / archive member must have
    width: int
    height: int
    persons: tuple[LabeledPerson, ...]


@dataclass
class CocoLabels:
    schema: str
    images: dict[str, LabeledImageSpec]  # by file_name (base name); images with at least one usable person
    listed: frozenset[str]  # every image base name of the document (a file of an image without persons is fine)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {annotation, reason}


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, text: str) -> None:
        self.items.append(text)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = "; ".join(self.items[:MAX_PROBLEMS])
        more = f" (+{len(self.items) - MAX_PROBLEMS} more)" if len(self.items) > MAX_PROBLEMS else ""
        raise InputError(422, "invalid_annotations", f"{len(self.items)} problem(s) in the annotations: {shown}{more}")


def resolve_schema(doc: dict, model_schema: str) -> str:
    """The schema the document's keypoints are in: the person category's names, else the keypoint count."""
    model = get_schema(model_schema)
    categories = doc.get("categories")
    names = None
    if isinstance(categories, list):
        people = [c for c in categories if isinstance(c, dict) and isinstance(c.get("keypoints"), list)]
        if len(people) > 1:
            raise InputError(422, "invalid_annotations", "more than one category with keypoints; send one (person)")
        names = [str(n) for n in people[0]["keypoints"]] if people else None
    if names is not None:
        for schema in (model, COCO17):
            if names == list(schema.keypoints):
                return schema.name
        raise InputError(
            422,
            "unknown_schema",
            f"the category's {len(names)} keypoint names {names[:4]}… are neither the active model's schema "
            f"{model.name} ({list(model.keypoints)[:4]}…) nor COCO-17",
        )
    counts = {len(a["keypoints"]) for a in doc.get("annotations") or [] if isinstance(a, dict) and "keypoints" in a}
    for schema in (model, COCO17):
        if counts == {3 * schema.num_keypoints}:
            return schema.name
    raise InputError(
        422,
        "unknown_schema",
        f"no category keypoint names, and keypoint lists of lengths {sorted(counts)} fit neither "
        f"{model.name} ({3 * model.num_keypoints} numbers) nor COCO-17 (51)",
    )


def parse_coco(doc: object, model_schema: str, max_persons: int = 64) -> CocoLabels:
    """Checked persons per image; InputError 422 naming every problem (up to MAX_PROBLEMS)."""
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("images"), list)
        or not isinstance(doc.get("annotations"), list)
    ):
        raise InputError(422, "invalid_annotations", "not a COCO keypoints document: needs 'images' and 'annotations'")
    schema = resolve_schema(doc, model_schema)
    k = get_schema(schema).num_keypoints
    problems = _Problems()
    specs: dict[int, tuple[str, int, int]] = {}
    names: set[str] = set()
    for i, image in enumerate(doc["images"]):
        where = f"images[{i}]"
        if not isinstance(image, dict):
            problems.add(f"{where} is not an object")
            continue
        image_id, file_name = image.get("id"), image.get("file_name")
        width, height = image.get("width"), image.get("height")
        if not isinstance(image_id, int) or isinstance(image_id, bool) or image_id in specs:
            problems.add(f"{where} needs a unique integer 'id' (got {image_id!r})")
            continue
        if not isinstance(file_name, str) or not posixpath.basename(file_name):
            problems.add(f"{where} (id {image_id}) needs a 'file_name'")
            continue
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
            problems.add(f"{where} ({file_name}) needs positive integer 'width' and 'height'")
            continue
        base = posixpath.basename(file_name.replace("\\", "/"))
        if base in names:
            problems.add(f"{where}: two images are named {base!r} (file names must be unique)")
            continue
        names.add(base)
        specs[image_id] = (base, int(str(width)), int(str(height)))
    persons: dict[int, list[LabeledPerson]] = {image_id: [] for image_id in specs}
    skipped: list[dict[str, str]] = []
    for i, ann in enumerate(doc["annotations"]):
        person = _annotation(ann, i, k, specs, problems, skipped)
        if person is not None:
            image_id, labeled = person
            persons[image_id].append(labeled)
    for image_id, people in persons.items():
        if len(people) > max_persons:
            problems.add(f"image {specs[image_id][0]!r} has {len(people)} persons, at most {max_persons}")
    problems.raise_if_any()
    images = {
        base: LabeledImageSpec(base, w, h, tuple(persons[image_id]))
        for image_id, (base, w, h) in specs.items()
        if persons[image_id]
    }
    for image_id, (base, _w, _h) in specs.items():
        if not persons[image_id]:
            skipped.append({"annotation": f"image {base}", "reason": "no usable person annotation: not stored"})
    if not images:
        raise InputError(422, "no_labeled_persons", "the annotations hold no usable person (see the COCO rules)")
    return CocoLabels(schema, images, frozenset(names), skipped)


def _annotation(
    ann: object,
    i: int,
    k: int,
    specs: dict[int, tuple[str, int, int]],
    problems: _Problems,
    skipped: list[dict[str, str]],
) -> tuple[int, LabeledPerson] | None:
    if not isinstance(ann, dict):
        problems.add(f"annotations[{i}] is not an object")
        return None
    label = f"annotation {ann.get('id', i)!r}"
    image_id = ann.get("image_id")
    if image_id not in specs:
        problems.add(f"{label}: image_id {image_id!r} is not in 'images'")
        return None
    base, width, height = specs[image_id]
    label = f"{label} ({base})"
    if ann.get("iscrowd"):
        skipped.append({"annotation": label, "reason": "iscrowd = 1 (a crowd region, not one person)"})
        return None
    keypoints = _keypoints(ann.get("keypoints"), k, width, height, label, problems)
    if keypoints is None:
        return None
    if not any(v > 0 for _x, _y, v in keypoints):
        skipped.append({"annotation": label, "reason": "no labeled keypoint (all visibility 0)"})
        return None
    box = _box(ann.get("bbox"), width, height, label, problems)
    if box is None:
        return None
    return image_id, LabeledPerson(box, keypoints, str(ann.get("id", i)))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _keypoints(
    value: object, k: int, width: int, height: int, label: str, problems: _Problems
) -> tuple[tuple[float, float, int], ...] | None:
    if not isinstance(value, list) or len(value) != 3 * k:
        size = len(value) if isinstance(value, list) else type(value).__name__
        problems.add(f"{label}: 'keypoints' must be {3 * k} numbers ({k} × x, y, v), got {size}")
        return None
    out = []
    for j in range(k):
        x, y, v = (_number(t) for t in value[3 * j : 3 * j + 3])
        if x is None or y is None or v not in (0.0, 1.0, 2.0):
            problems.add(f"{label}: keypoint {j} is not finite x, y and a visibility 0, 1 or 2")
            return None
        tol = BOX_TOLERANCE_PX
        if v > 0 and not (-tol <= x <= width + tol and -tol <= y <= height + tol):
            problems.add(f"{label}: keypoint {j} ({x:g}, {y:g}) lies outside the {width}×{height} image")
            return None
        out.append((x, y, int(v)) if v > 0 else (0.0, 0.0, 0))
    return tuple(out)


def _box(value: object, width: int, height: int, label: str, problems: _Problems):
    numbers = [_number(t) for t in value] if isinstance(value, list) and len(value) == 4 else None
    if numbers is None or any(t is None for t in numbers):
        problems.add(f"{label}: 'bbox' must be [x, y, w, h] (4 finite numbers)")
        return None
    x, y, w, h = (float(t) for t in numbers if t is not None)
    if w < MIN_BOX_SIDE_PX or h < MIN_BOX_SIDE_PX:
        problems.add(f"{label}: bbox {w:g}×{h:g} px is smaller than {MIN_BOX_SIDE_PX:g} px")
        return None
    tol = BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        problems.add(f"{label}: bbox [{x:g}, {y:g}, {w:g}, {h:g}] is not inside the {width}×{height} image")
        return None
    x0, y0 = max(x, 0.0), max(y, 0.0)
    return (x0, y0, min(x + w, width) - x0, min(y + h, height) - y0)


# ---------------------------------------------------------------------- a labeling task out (active learning)
def labeling_task(items: list[dict], schema_name: str, model_version: str, score_min: float = 0.2) -> dict:
    """A COCO keypoints document of pre-annotations for people to correct. `items`: {file_name, image_id,
    width, height, poses: [{box, keypoints (K, 2), scores (K,)}]} (image pixels). A joint scored under
    `score_min` gets visibility 0 (left for the annotator), others 2. Importing the corrected document through
    POST /v1/labeled closes the loop (its category names the schema)."""
    schema = get_schema(schema_name)
    images: list[dict] = []
    annotations: list[dict] = []
    for item in items:
        images.append(
            {"id": item["image_id"], "file_name": item["file_name"], "width": item["width"], "height": item["height"]}
        )
        w, h = item["width"], item["height"]
        for pose in item["poses"]:
            flat: list[float] = []
            for (x, y), score in zip(pose["keypoints"], pose["scores"]):
                labeled = score >= score_min and 0 <= x <= w and 0 <= y <= h  # never a point off the image
                flat += [round(float(x), 2), round(float(y), 2), 2] if labeled else [0, 0, 0]
            bx, by, bw, bh = (float(v) for v in pose["box"])
            x0, y0 = min(max(bx, 0.0), w), min(max(by, 0.0), h)  # the box clipped to the image
            box = [x0, y0, min(bx + bw, w) - x0, min(by + bh, h) - y0]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": item["image_id"],
                    "category_id": 1,
                    "bbox": [round(v, 2) for v in box],
                    "keypoints": flat,
                    "num_keypoints": sum(1 for v in flat[2::3] if v),
                    "score": round(float(sum(pose["scores"]) / max(len(pose["scores"]), 1)), 4),
                    "iscrowd": 0,
                }
            )
    category = {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(schema.keypoints),
        "skeleton": [[a + 1, b + 1] for a, b in schema.skeleton],  # COCO counts joints from 1
    }
    info = {"description": f"PoseLoop labeling task: pre-annotations by model version {model_version}"}
    return {"info": info, "images": images, "annotations": annotations, "categories": [category]}


LABEL_STUDIO_POINT_WIDTH = 0.5  # a keypoint's drawn size, % of the image width


def label_studio_tasks(coco: dict, image_url: str, model_version: str) -> list[dict]:
    """Label Studio import tasks (`data.image` = image_url + file_name) with the pre-annotations as
    `predictions`: per person a `rectanglelabels` box and one `keypointlabels` point per labeled joint, in
    percent of the image (Label Studio's convention), joints tied to their box by `parentID`."""
    names = coco["categories"][0]["keypoints"]
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    tasks = []
    for image in coco["images"]:
        w, h = image["width"], image["height"]
        result: list[dict] = []
        for n, ann in enumerate(by_image.get(image["id"], [])):
            x, y, bw, bh = ann["bbox"]
            box_id = f"p{n}"
            common = {"to_name": "image", "original_width": w, "original_height": h, "image_rotation": 0}
            result.append(
                {
                    **common,
                    "id": box_id,
                    "from_name": "person",
                    "type": "rectanglelabels",
                    "value": {
                        "x": 100 * x / w,
                        "y": 100 * y / h,
                        "width": 100 * bw / w,
                        "height": 100 * bh / h,
                        "rotation": 0,
                        "rectanglelabels": ["person"],
                    },
                }
            )
            flat = ann["keypoints"]
            for j, name in enumerate(names):
                kx, ky, v = flat[3 * j : 3 * j + 3]
                if v:
                    result.append(
                        {
                            **common,
                            "id": f"{box_id}_{j}",
                            "parentID": box_id,
                            "from_name": "keypoints",
                            "type": "keypointlabels",
                            "value": {
                                "x": 100 * kx / w,
                                "y": 100 * ky / h,
                                "width": LABEL_STUDIO_POINT_WIDTH,
                                "keypointlabels": [name],
                            },
                        }
                    )
        scores = [a["score"] for a in by_image.get(image["id"], [])]
        tasks.append(
            {
                "data": {"image": image_url + image["file_name"], "poseloop_id": image["file_name"].split(".")[0]},
                "predictions": [
                    {"model_version": model_version, "score": min(scores) if scores else 0.0, "result": result}
                ],
            }
        )
    return tasks


def label_studio_config(schema_name: str) -> str:
    """The Label Studio labeling interface for these tasks: an image, person boxes, one label per joint."""
    labels = "\n".join(f'    <Label value="{name}"/>' for name in get_schema(schema_name).keypoints)
    return (
        '<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
        '  <RectangleLabels name="person" toName="image">\n    <Label value="person"/>\n  </RectangleLabels>\n'
        f'  <KeyPointLabels name="keypoints" toName="image">\n{labels}\n  </KeyPointLabels>\n</View>\n'
    )
