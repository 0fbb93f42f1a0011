"""Which records a run trains and validates on, from the data section of its config."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from training.config import DataConfig
from training.datasets import default_data_root
from training.datasets.records import PersonRecord


@dataclass(frozen=True)
class Splits:
    train: list[PersonRecord]
    val: list[PersonRecord]  # model selection (v2: the dev split)
    schema: str
    description: str  # human-readable data summary stored with checkpoints and exports
    unlabeled: list[PersonRecord] = field(default_factory=list)
    report: list[PersonRecord] = field(default_factory=list)  # v2: scored once per run, never used to choose


def load_unlabeled(cfg: DataConfig, schema: str) -> list[PersonRecord]:
    """The unlabeled pool: LSPET crops (person boxes from boxes.json) or any folder of images."""
    if cfg.unlabeled is None:
        return []
    if cfg.unlabeled == "lspet":
        from training.datasets.lsp import load_lspet_unlabeled

        records = load_lspet_unlabeled(data_root(cfg))
    else:
        from training.datasets.unlabeled import load_image_folder

        folder = Path(cfg.unlabeled)
        boxes = folder / "boxes.json"
        records = load_image_folder(folder, boxes if boxes.exists() else None, schema=schema)
    return records[: cfg.unlabeled_limit]


def data_root(cfg: DataConfig) -> Path:
    root = Path(cfg.root) if cfg.root else default_data_root()
    if not root.exists():
        raise FileNotFoundError(f"dataset root {root} not found (set data.root or $POSELOOP_DATA)")
    return root


PSEUDO_LABELS_FORMAT = "poseloop.pseudo_labels/1"
PSEUDO_ID_PREFIX = "pseudo/"


def load_pseudo_labels(path: str | Path) -> list[PersonRecord]:
    """The kept persons of a pseudo-label cache (written by training/distill/cache.py) as labeled records.

    Keypoints are image pixels; kept joints get visibility 2, dropped or unmapped ones visibility 0 with
    coordinates 0 (so their targets get weight 0); record ids are "pseudo/<pool record id>"."""
    payload = json.loads(Path(path).read_text())
    if payload.get("format") != PSEUDO_LABELS_FORMAT:
        raise ValueError(f"{path}: not a pseudo-label cache (format {payload.get('format')!r})")
    records = []
    for person in payload["persons"]:
        if not person["person_kept"]:
            continue
        kept = np.asarray(person["kept"], bool)
        keypoints = [xy if keep else (0.0, 0.0) for xy, keep in zip(person["keypoints"], kept)]
        records.append(
            PersonRecord(
                image_path=Path(person["image"]),
                box=np.asarray(person["box"], np.float32),
                keypoints=np.asarray(keypoints, np.float32),
                visibility=np.where(kept, 2, 0).astype(np.int8),
                schema=payload["schema"],
                record_id=PSEUDO_ID_PREFIX + person["id"],
            )
        )
    return records


LABELED_RECORDS_FORMAT = "poseloop.labeled_records/1"  # written by continual/labeled.py export_records


def load_labeled_records(path: str | Path) -> dict[str, list[PersonRecord]]:
    """The persons of a labeled-records file by part ("train", "gate"), in their own schema.

    Keypoints are image pixels; joints with visibility 0 get coordinates 0 (weight 0 in training, not counted in
    evaluation); record ids are "labeled/<seq>"."""
    payload = json.loads(Path(path).read_text())
    if payload.get("format") != LABELED_RECORDS_FORMAT:
        raise ValueError(f"{path}: not a labeled-records file (format {payload.get('format')!r})")
    parts: dict[str, list[PersonRecord]] = {"train": [], "gate": []}
    for person in payload["persons"]:
        visibility = np.asarray(person["visibility"], np.int8)
        keypoints = np.where(visibility[:, None] > 0, np.asarray(person["keypoints"], np.float32), 0.0)
        parts[person["part"]].append(
            PersonRecord(
                image_path=Path(person["image"]),
                box=np.asarray(person["box"], np.float32),
                keypoints=keypoints,
                visibility=visibility,
                schema=person["schema"],
                record_id=person["id"],
            )
        )
    return parts


def remap_record(record: PersonRecord, schema: str) -> PersonRecord:
    """The record's labels in another keypoint schema, matched by joint name; joints the source lacks get
    visibility 0 (weight 0 in training, not counted in evaluation)."""
    from models.schema_map import joint_map
    from models.schemas import get_schema

    if record.schema == schema:
        return record
    mapping = joint_map(get_schema(record.schema), get_schema(schema))
    known = mapping >= 0
    keypoints = visibility = None
    if record.keypoints is not None and record.visibility is not None:
        keypoints = np.zeros((len(mapping), 2), np.float32)
        keypoints[known] = record.keypoints[mapping[known]]
        visibility = np.zeros(len(mapping), np.int8)
        visibility[known] = record.visibility[mapping[known]]
    return replace(record, keypoints=keypoints, visibility=visibility, schema=schema)


def build_splits(cfg: DataConfig) -> Splits:
    """Labeled train/val records (+ the unlabeled pool when `data.unlabeled` is set; + pseudo-labelled persons,
    appended to train after the label budget, when `data.pseudo_labels` is set; + registered labeled persons,
    `data.labeled_records`), in `cfg.model_schema`."""
    splits = None if cfg.labeled_records_only else _labeled_splits(cfg)
    if splits is not None and cfg.model_schema != splits.schema:
        target = cfg.model_schema
        splits = replace(
            splits,
            train=[remap_record(r, target) for r in splits.train],
            val=[remap_record(r, target) for r in splits.val],
            report=[remap_record(r, target) for r in splits.report],
            schema=target,
            description=f"{splits.description}; labels mapped {splits.schema} → {target} by joint name",
        )
    splits = _with_labeled_records(cfg, splits)
    if cfg.pseudo_labels:
        pseudo = load_pseudo_labels(cfg.pseudo_labels)
        if pseudo and pseudo[0].schema != splits.schema:
            raise ValueError(f"{cfg.pseudo_labels}: pseudo-labels are {pseudo[0].schema}, the data {splits.schema}")
        joints = int(sum((r.visibility > 0).sum() for r in pseudo if r.visibility is not None))
        repeat = labeled_repeat(len(splits.train), len(pseudo), cfg.pseudo_share)
        shared = f"; labeled records ×{repeat} for a pseudo share of {cfg.pseudo_share}" if cfg.pseudo_share else ""
        splits = replace(
            splits,
            train=splits.train * repeat + pseudo,
            description=f"{splits.description}; + {len(pseudo)} pseudo-labelled persons ({joints} joints) "
            f"from {cfg.pseudo_labels}{shared}",
        )
    unlabeled = load_unlabeled(cfg, splits.schema)
    if not unlabeled:
        return splits
    return replace(
        splits,
        unlabeled=unlabeled,
        description=f"{splits.description}; unlabeled {cfg.unlabeled} ({len(unlabeled)} persons)",
    )


def labeled_repeat(labeled: int, pseudo: int, share: float | None) -> int:
    """How many times each labeled record enters the train split so that pseudo-labelled persons make up about
    `share` of it (DataConfig.pseudo_share); 1 without a share or without either kind of record."""
    if share is None or not labeled or not pseudo:
        return 1
    return max(1, round((1 - share) / share * pseudo / labeled))


def _with_labeled_records(cfg: DataConfig, splits: Splits | None) -> Splits:
    """`splits` (in the model's schema) + the labeled-records file's train part, mapped to the model's schema by
    joint name; without `splits` (labeled_records_only): train = the file's train part, val = its gate part."""
    if cfg.labeled_records is None:
        if splits is None:
            raise ValueError("data.labeled_records_only needs data.labeled_records")
        return splits
    parts = load_labeled_records(cfg.labeled_records)
    schema = cfg.model_schema
    train = [remap_record(r, schema) for r in parts["train"]]
    added = f"{len(train)} registered labeled persons from {Path(cfg.labeled_records).name}"
    if splits is None:
        val = [remap_record(r, schema) for r in parts["gate"]]
        if not train or not val:
            raise ValueError(
                f"{cfg.labeled_records}: labeled_records_only needs persons in both the train and the "
                f"gate part (has {len(train)} and {len(val)})"
            )
        return Splits(train, val, schema, f"{added}; val = its {len(val)} gate persons")
    return replace(splits, train=splits.train + train, description=f"{splits.description}; + {added}")


def _labeled_splits(cfg: DataConfig) -> Splits:
    """LSP v1: train = first `label_budget` of im0001–0800, val = im0801–1000 (the project convention); v2: see
    DataConfig.lsp_protocol."""
    if cfg.dataset == "lsp":
        from training.datasets.lsp import lsp_split

        root = data_root(cfg)
        train = lsp_split(root, "train", label_budget=cfg.label_budget, protocol=cfg.lsp_protocol)
        val = lsp_split(root, "val", protocol=cfg.lsp_protocol)
        if cfg.lsp_protocol == "v2":
            report = lsp_split(root, "report", protocol="v2")
            description = f"LSP v2: im0001-0400 first {len(train)} labeled; dev im0701-0800; report 500 persons"
            return Splits(train, val, "lsp14", description, report=report)
        return Splits(train, val, "lsp14", f"LSP im0001-0800 first {len(train)} labeled; val im0801-1000")
    if cfg.dataset == "coco":
        from training.datasets.coco import load_coco_keypoints

        if not (cfg.coco_ann_file and cfg.coco_image_dir and cfg.val_ann_file):
            raise ValueError("dataset=coco needs data.coco_ann_file, data.coco_image_dir and data.val_ann_file")
        train = load_coco_keypoints(cfg.coco_ann_file, cfg.coco_image_dir, max_instances=cfg.label_budget)
        val = load_coco_keypoints(cfg.val_ann_file, cfg.coco_image_dir)
        return Splits(train, val, "coco17", f"COCO first {len(train)} instances of {cfg.coco_ann_file}")
    if cfg.dataset == "mpii":
        from training.datasets.mpii import load_mpii

        if not (cfg.coco_ann_file and cfg.coco_image_dir and cfg.val_ann_file):
            raise ValueError(
                "dataset=mpii needs data.coco_ann_file (train json), data.coco_image_dir, data.val_ann_file"
            )
        train = load_mpii(cfg.coco_ann_file, cfg.coco_image_dir)[: cfg.label_budget]
        val = load_mpii(cfg.val_ann_file, cfg.coco_image_dir)
        return Splits(train, val, "mpii16", f"MPII first {len(train)} of {cfg.coco_ann_file}")
    raise ValueError(f"unknown dataset {cfg.dataset!r}")
