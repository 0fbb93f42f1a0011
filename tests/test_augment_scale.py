"""Scale invariance of the hard-view augmentations: the same share of the crop (and of its joints) is occluded
at 128×96 as at 256×192, and 256×192 keeps the papers' pixel sizes (box half-sizes 10–19 px, jitter σ = 10 px).

Sizes are fractions of the crop's shorter side min(h, w) (see training.ssl.augment); the old pixel defaults
(half-sizes 10–19 px, jitter 10 px at any size) occluded ~3.4× the area and ~1.6× the joints at 128×96.
"""

import inspect

import pytest
import torch

from training.ssl.augment import (
    AUGMENTS,
    HALF_SIZE_FRAC,
    JITTER_FRAC,
    AugmentPath,
    adaptive_keypoint_mask,
    apply_path,
    cut_occlude,
    cutmix,
    cutout,
    half_size_px,
    joint_cutout,
    keypoint_mix,
)

torch.set_num_threads(1)
SMALL, LARGE = (128, 96), (256, 192)  # (h, w): the project's crop and the papers'
N, K = 256, 14  # crops per batch, joints per crop (LSP)
JOINT_CENTRED = ["joint_cutout", "cut_occlude", "keypoint_mix", "adaptive_mask"]
RANDOM_BOXES = ["cutout", "cutmix"]
# Tolerance on the 128×96 / 256×192 ratio of the mean occluded fraction (and of the covered-joint fraction).
# Both sizes use the same seed and the same relative joint layout, so the draws are matched and what is left is
# (a) integer quantisation: half-sizes 5–9 px at 128×96 vs 10–19 px give a mean box area within 0.1% of the same
# share of the crop, and 1-px rounding of centres and joint pixels moves boxes by ≤ 1/96 of the crop; (b)
# sampling noise: over 8 seeds the ratios stayed in [0.97, 1.03] (sd ≤ 0.017, joints ≤ 0.012). 10% is > 5 sd
# and the old pixel sizes miss it by far (area ratios 3.4–3.8, joint ratios 1.57–1.69).
REL_TOL = 0.10


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def occlusion(name: str, hw: tuple[int, int], seed: int = 0) -> tuple[float, float]:
    """(mean fraction of pixels changed, fraction of joints whose pixel is changed) for path `name` on N random
    crops of size hw, joints uniform in the central 70% of each axis (the same relative layout at every size)."""
    h, w = hw
    rel = 0.15 + 0.7 * torch.rand(N, K, 2, generator=gen(1))
    joints = rel * torch.tensor([w, h], dtype=torch.float32)
    peaks = torch.rand(N, K, generator=gen(2))  # AKM: a spread of easy and hard joints
    images = torch.randn(N, 1, h, w, generator=gen(3))  # no pixel equals its replacement (0 or another image's)
    out = apply_path(name, images, joints, torch.ones(N, K, dtype=torch.bool), peaks, gen(seed))
    changed = (out != images).any(1)  # (N, h, w)
    x, y = torch.floor(joints + 0.5).long().unbind(-1)
    hit = changed[torch.arange(N)[:, None], y, x]
    return changed.float().mean().item(), hit.float().mean().item()


def ratio_ok(small: float, large: float) -> bool:
    return abs(small / large - 1) <= REL_TOL


@pytest.mark.parametrize("name", JOINT_CENTRED + RANDOM_BOXES)
def test_occluded_fraction_is_the_same_at_128x96_and_256x192(name):
    area_small, joints_small = occlusion(name, SMALL)
    area_large, joints_large = occlusion(name, LARGE)
    assert 0.02 < area_large < 0.2  # a real occlusion (≈ 4–9% of the crop with the defaults), not a no-op
    assert ratio_ok(area_small, area_large), (area_small, area_large)
    if name in JOINT_CENTRED:  # random boxes hit only ~9% of joints: too few for a 10% test, and not their point
        assert joints_large > 0.15  # they do hide joints
        assert ratio_ok(joints_small, joints_large), (joints_small, joints_large)


def test_every_size_bearing_augmentation_is_covered():
    """A new augmentation with a size option must join this file's measurements."""
    params = {name: set(inspect.signature(AUGMENTS.get(name).fn).parameters) for name in AUGMENTS.names()}
    assert {name for name, p in params.items() if p & {"half_size_frac", "jitter_frac"}} == set(
        JOINT_CENTRED + RANDOM_BOXES
    )
    assert not any(p & {"half_size", "jitter_std"} for p in params.values())  # no pixel-sized option is left


# ---------------------------------------------------------------- pixel sizes drawn
def half_sizes(mask: torch.Tensor) -> torch.Tensor:
    """Half-sizes of single boxes (one per image) that touch no border, from their row/column extents."""
    m = mask[:, 0] > 0
    rows, cols = m.any(2), m.any(1)  # (N, h), (N, w)
    inside = rows.any(1) & ~rows[:, 0] & ~rows[:, -1] & ~cols[:, 0] & ~cols[:, -1]
    side_y, side_x = rows[inside].sum(1), cols[inside].sum(1)
    assert torch.equal(side_y, side_x) and (side_y % 2 == 1).all()  # square boxes of side 2·half + 1
    assert torch.equal(m[inside].sum((1, 2)), side_y * side_x)  # solid boxes, not a union
    return (side_y - 1) // 2


def single_boxes(name: str, hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Masks of one box per image for each size-bearing augmentation, with defaults for every size option
    (joints, and with them the boxes, well inside the crop)."""
    h, w = hw
    images = torch.randn(N, 1, h, w, generator=gen(3))
    joints = torch.tensor([[0.35 * w, 0.5 * h], [0.65 * w, 0.5 * h]]).expand(N, 2, 2)
    g = gen(seed)
    if name == "joint_cutout":
        return joint_cutout(images, joints, num_joints=1, jitter_frac=0.0, generator=g)[1]
    if name == "adaptive_mask":
        return adaptive_keypoint_mask(images, joints, torch.full((N, 2), 0.9), tau=0.0, max_masks=1, generator=g)[1]
    if name == "cut_occlude":
        return cut_occlude(images, joints, num_patches=1, generator=g)[1]
    if name == "keypoint_mix":
        return keypoint_mix(images, joints, num_joints=1, generator=g)[1]
    return {"cutout": cutout, "cutmix": cutmix}[name](images, holes=1, generator=g)[1]


@pytest.mark.parametrize("name", JOINT_CENTRED + RANDOM_BOXES)
def test_default_half_sizes_are_the_papers_10_to_19_px_at_256x192(name):
    drawn = half_sizes(single_boxes(name, LARGE))
    assert len(drawn) > 150
    assert set(drawn.tolist()) == set(range(10, 20))  # exactly the papers' range, every value drawn
    small = half_sizes(single_boxes(name, SMALL))
    assert set(small.tolist()) == set(range(5, 10))  # the same share of a 96-px-wide crop


def test_half_size_px_converts_fractions_of_the_shorter_side():
    assert half_size_px(HALF_SIZE_FRAC, LARGE) == (10, 19)
    assert half_size_px(HALF_SIZE_FRAC, (192, 256)) == (10, 19)  # the shorter side, whichever it is
    assert half_size_px(HALF_SIZE_FRAC, SMALL) == (5, 9)  # 19/192 · 96 = 9.5: ties go down (see _round_px)
    assert half_size_px(HALF_SIZE_FRAC, (512, 384)) == (20, 38)
    assert half_size_px(HALF_SIZE_FRAC, (8, 6)) == (1, 1)  # never below 1 px
    assert half_size_px((12 / 96, 12 / 96), SMALL) == (12, 12)  # float noise does not move exact integers
    for bad in [(10, 19), (0.1, 0.05), (-0.01, 0.1)]:  # old pixel values, lo > hi, negative
        with pytest.raises(ValueError):
            half_size_px(bad, SMALL)


def test_joint_cutout_jitter_is_a_fraction_of_the_shorter_side():
    """σ of the box centre = JITTER_FRAC · min(h, w): 10 px at 256×192 (the paper), 5 px at 128×96."""
    for (h, w), sigma in ((LARGE, 10.0), (SMALL, 5.0)):
        joints = torch.tensor([[[0.5 * w, 0.5 * h]]]).expand(400, 1, 2)
        frac = (2 / min(h, w), 2 / min(h, w))  # small boxes: never clipped by the 3σ jitter
        _, mask = joint_cutout(torch.ones(400, 1, h, w), joints, num_joints=1, half_size_frac=frac, generator=gen(5))
        rows, cols = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        area = mask.sum((1, 2, 3))
        dx = (mask[:, 0] * cols).sum((1, 2)) / area - 0.5 * w
        dy = (mask[:, 0] * rows).sum((1, 2)) / area - 0.5 * h
        assert JITTER_FRAC * min(h, w) == pytest.approx(sigma)
        for d in (dx, dy):  # SE of a std over 400 draws ≈ 3.5%, plus ≤ 0.3 px of rounding
            assert abs(d.std().item() / sigma - 1) < 0.15


def test_paths_reject_the_old_pixel_options_with_a_pointer():
    with pytest.raises(TypeError, match="half_size_frac"):
        AugmentPath("cutout", {"cutout": {"half_size": (10, 19)}})
    with pytest.raises(TypeError, match="jitter_frac"):
        AugmentPath("joint_cutout", {"joint_cutout": {"jitter_std": 10.0}})
    with pytest.raises(ValueError):  # pixel values under the new name fail when the path is built, not mid-run
        AugmentPath("cutmix", {"cutmix": {"half_size_frac": [10, 19]}})
    path = AugmentPath("joint_cutout+cutmix", {"cutmix": {"half_size_frac": [0.05, 0.05]}})  # YAML gives lists
    images = torch.randn(2, 3, 128, 96, generator=gen())
    joints = torch.full((2, 3, 2), 48.0)
    assert apply_path(path, images, joints, None, None, gen()).shape == images.shape
