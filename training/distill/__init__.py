"""Offline data distillation (Radosavovic et al., CVPR 2018): a teacher labels the unlabeled pool once per round,
pseudo-labels filtered for a precision calibrated on dev are cached, and the student trains on labeled +
pseudo-labelled crops (`data.pseudo_labels`) with the ordinary `supervised` method. Rounds: poseloop/distill.py."""

from models.schema_map import NAME_ALIASES, joint_map, map_joints
from training.distill.cache import PseudoLabels, cache_path, calibrate_teacher, label_pool
from training.distill.filter import Calibration, FilterSpec, Thresholds, calibrate, keep_mask, pck_correct
from training.distill.teachers import EnsembleTeacher, Teacher, TeacherOutput, TTAConfig, aggregate, build_teacher

__all__ = [
    "NAME_ALIASES",
    "Calibration",
    "EnsembleTeacher",
    "FilterSpec",
    "PseudoLabels",
    "TTAConfig",
    "Teacher",
    "TeacherOutput",
    "Thresholds",
    "aggregate",
    "build_teacher",
    "cache_path",
    "calibrate",
    "calibrate_teacher",
    "joint_map",
    "keep_mask",
    "label_pool",
    "map_joints",
    "pck_correct",
]
