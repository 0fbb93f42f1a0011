"""Which records a run trains and validates on, from the data section of its config."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from training.config import DataConfig
from training.datasets import default_data_root
from training.datasets.records import PersonRecord


@dataclass(frozen=True)
class Splits:
    train: list[PersonRecord]
    val: list[PersonRecord]
    schema: str
    description: str  # human-readable data summary stored with checkpoints and exports
    unlabeled: list[PersonRecord] = field(default_factory=list)


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


def build_splits(cfg: DataConfig) -> Splits:
    """Labeled train/val records (+ the unlabeled pool when `data.unlabeled` is set)."""
    splits = _labeled_splits(cfg)
    unlabeled = load_unlabeled(cfg, splits.schema)
    if not unlabeled:
        return splits
    return replace(
        splits,
        unlabeled=unlabeled,
        description=f"{splits.description}; unlabeled {cfg.unlabeled} ({len(unlabeled)} persons)",
    )


def _labeled_splits(cfg: DataConfig) -> Splits:
    """LSP: train = first `label_budget` of im0001–0800, val = im0801–1000 (the project convention)."""
    if cfg.dataset == "lsp":
        from training.datasets.lsp import lsp_split

        root = data_root(cfg)
        train = lsp_split(root, "train", label_budget=cfg.label_budget)
        val = lsp_split(root, "val")
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
