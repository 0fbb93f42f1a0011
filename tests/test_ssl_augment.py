"""Property tests for training.ssl.augment, always on tall non-square crops (H=128, W=96; heatmaps 32×24).

Points are (x, y) = (column, row); masks are indexed mask[row, col]. Joint-based tests place joints near the
bottom-left corner and the right edge, where the reference code's H/W and x/y swaps show up.
"""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from training.ssl.augment import (
    AUGMENTS,
    AugmentPath,
    adaptive_keypoint_mask,
    affine_theta,
    apply_path,
    check_path,
    cut_occlude,
    cutmix,
    cutout,
    joint_cutout,
    keypoint_mix,
    mixup,
    photometric,
    random_affine,
    relative_responses,
    warp,
    warp_points,
)

torch.set_num_threads(1)
H, W = 128, 96  # input crop: tall on purpose
HH, HW = 32, 24  # its heatmap (stride 4)
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
FAST = settings(max_examples=25, deadline=None)
PX = 1 / min(H, W)  # one pixel of this crop as a size fraction (sizes are fractions of the shorter side)


def px(lo: float, hi: float) -> tuple[float, float]:
    """A half-size range of lo–hi px on this crop, as the half_size_frac the augmentations take."""
    return lo * PX, hi * PX


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian(h: int, w: int, x: float, y: float, sigma: float) -> torch.Tensor:
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    return torch.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2)).float()


def peak(m: torch.Tensor) -> tuple[float, float]:
    """(x, y) weighted centroid of a single blob lying well inside the map (h, w).

    Centroids are unbiased under bilinear resampling to ~0.1 heatmap px; argmax + log-parabola is not (up to 0.3).
    """
    h, w = m.shape
    m = m.double()
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    return float((m * cols).sum() / m.sum()), float((m * rows).sum() / m.sum())


def thetas(scale, rot, tx=0.0, ty=0.0, rigid=True):
    t = affine_theta(torch.tensor([scale]), torch.tensor([rot]), (W, H) if rigid else None)
    return t + torch.tensor([[[0.0, 0.0, tx], [0.0, 0.0, ty]]])


def coded_images(n: int) -> torch.Tensor:
    """Channel 0 = image index + 1, channel 1 = row + 1, channel 2 = column + 1: every pixel names its origin."""
    rows = torch.arange(H, dtype=torch.float32)[:, None].expand(H, W)
    cols = torch.arange(W, dtype=torch.float32)[None, :].expand(H, W)
    return torch.stack([torch.stack([torch.full((H, W), i + 1.0), rows + 1, cols + 1]) for i in range(n)])


# ---------------------------------------------------------------- shared affine
def test_identity_theta_is_identity():
    x = torch.randn(2, 3, H, W, generator=gen())
    eye = affine_theta(torch.ones(2), torch.zeros(2), (W, H))
    assert torch.allclose(warp(x, eye), x, atol=1e-4)  # float32 grid rounding only
    pts = torch.rand(2, 5, 2, generator=gen(1)) * torch.tensor([W, H])
    assert torch.allclose(warp_points(pts, eye, (W, H)), pts, atol=1e-5)


@given(
    scale=st.floats(0.75, 1.25),
    rot=st.floats(-60, 60),
    tx=st.floats(-0.1, 0.1),
    ty=st.floats(-0.1, 0.1),
    px=st.floats(18, 30),
    py=st.floats(24, 40),
    rigid=st.booleans(),
)
@example(scale=0.75, rot=60.0, tx=0.1, ty=-0.1, px=29.5, py=39.6, rigid=True)
@FAST
def test_warped_heatmap_peak_lands_on_warp_points(scale, rot, tx, ty, px, py, rigid):
    """A σ=2 Gaussian in a (1, 1, 64, 48) heatmap (room for the blob to stay inside) decodes to warp_points."""
    theta = thetas(scale, rot, tx, ty, rigid)
    warped = warp(gaussian(64, 48, px, py, 2.0)[None, None], theta)[0, 0]
    expected = warp_points(torch.tensor([[[px, py]]]), theta, (48, 64))[0, 0]
    assert math.dist(peak(warped), expected.tolist()) < 0.15  # spec: 0.5 heatmap px


@given(scale=st.floats(0.75, 1.25), rot=st.floats(-60, 60), qx=st.floats(40, 56), qy=st.floats(52, 76))
@example(scale=0.75, rot=60.0, qx=50.0, qy=70.0)
@example(scale=0.75, rot=-60.0, qx=40.0, qy=52.0)
@FAST
def test_image_and_heatmap_stay_aligned_at_stride_4(scale, rot, qx, qy):
    """Same θ on a (1,3,128,96) image dot and a (1,2,32,24) heatmap at q/4: decoded heatmap × 4 ≈ image dot.

    The spec allows 2 input px; we require 0.6 (resampling a σ=2 heatmap costs up to ~0.4). Plain affine_grid
    with align_corners=False (u ↔ 4u + 1.5 instead of the codec's u ↔ 4u) is off by up to 2.5 px at 60° /
    scale 0.75 (and by > 0.6 px for ~3/4 of random θ), so it fails this test.
    """
    theta = thetas(scale, rot)
    image = gaussian(H, W, qx, qy, 3.0)[None, None].expand(1, 3, H, W)
    heatmap = gaussian(HH, HW, qx / 4, qy / 4, 2.0)[None, None].expand(1, 2, HH, HW)
    dot = peak(warp(image, theta)[0, 1])
    u = peak(warp(heatmap, theta)[0, 1])
    assert math.dist((4 * u[0], 4 * u[1]), dot) < 0.6
    q = torch.tensor([[[qx, qy]]])
    assert torch.allclose(4 * warp_points(q / 4, theta, (HW, HH)), warp_points(q, theta, (W, H)), atol=1e-3)
    assert math.dist(dot, warp_points(q, theta, (W, H))[0, 0].tolist()) < 0.1


def test_rotation_and_scale_directions():
    """+90° shows content rotated counter-clockwise: a dot right of centre moves up; scale 1.25 shrinks it in."""
    centre = torch.tensor([W / 2, H / 2])
    right = (centre + torch.tensor([20.0, 0.0]))[None, None]
    moved = warp_points(right, thetas(1.0, 90.0), (W, H))[0, 0] - centre
    assert torch.allclose(moved, torch.tensor([0.0, -20.0]), atol=1e-4)  # rigid: 20 px stays 20 px
    dot = peak(warp(gaussian(H, W, *right[0, 0].tolist(), 3.0)[None, None], thetas(1.0, 90.0))[0, 0])
    assert math.dist(dot, (centre + moved).tolist()) < 0.3
    shrunk = warp_points(right, thetas(1.25, 0.0), (W, H))[0, 0] - centre
    assert torch.allclose(shrunk, torch.tensor([16.0, 0.0]), atol=1e-4)


def test_random_affine_ranges():
    theta = random_affine(2000, gen(3), size=(W, H))
    linear = theta[:, :, :2] * torch.tensor([[1.0, W / H], [H / W, 1.0]])  # back to pixel space
    scale = torch.linalg.det(linear).sqrt()
    rot = torch.rad2deg(torch.atan2(linear[:, 1, 0], linear[:, 0, 0]))
    assert scale.min() >= 0.75 - 1e-5 and scale.max() <= 1.25 + 1e-5 and rot.abs().max() <= 60 + 1e-3
    assert 0.15 < (rot == 0).float().mean() < 0.25  # rotation applied with prob 0.8
    assert torch.equal(theta, random_affine(2000, gen(3), size=(W, H)))


# ---------------------------------------------------------------- joint-centred masks
CORNER_JOINTS = torch.tensor([[[10.0, 120.0], [93.0, 40.0]]])  # bottom-left of the tall crop; right edge


@pytest.mark.parametrize("fn", ["joint_cutout", "adaptive_mask"])
def test_masks_cover_joints_and_not_the_transposed_location(fn):
    images = torch.ones(1, 3, H, W)
    if fn == "joint_cutout":
        out, mask = joint_cutout(
            images, CORNER_JOINTS, num_joints=2, half_size_frac=px(12, 12), jitter_frac=0.0, generator=gen()
        )
    else:  # both joints equally easy: max_masks=2 of K=2 joints
        out, mask, counts = adaptive_keypoint_mask(
            images,
            CORNER_JOINTS,
            torch.tensor([[0.9, 0.9001]]),
            tau=0.0,
            max_masks=2,
            half_size_frac=px(12, 12),
            generator=gen(),
        )
        assert counts.tolist() == [2]
    m = mask[0, 0]
    assert m[120, 10] == 1 and m[40, 93] == 1  # mask[row = y, col = x]
    assert m[93, 40] == 0 and m[10, 120 % W] == 0  # never at (row = x, col = y)
    _rows, _cols = torch.nonzero(m, as_tuple=True)
    expected = torch.zeros(H, W)
    expected[120 - 12 :, : 10 + 13] = 1  # box clipped by the bottom edge (rows) ...
    expected[40 - 12 : 40 + 13, 93 - 12 :] = 1  # ... and by the right edge (columns)
    assert torch.equal(m, expected)
    assert torch.equal(out, images * (1 - mask))


@given(x=st.floats(20, 75), y=st.floats(20, 107), half=st.integers(10, 19))
@FAST
def test_joint_cutout_centre_of_mass_is_the_joint(x, y, half):
    joints = torch.tensor([[[x, y]]])
    _, mask = joint_cutout(
        torch.ones(1, 3, H, W), joints, num_joints=1, half_size_frac=px(half, half), jitter_frac=0.0, generator=gen()
    )
    rows, cols = torch.nonzero(mask[0, 0], as_tuple=True)
    assert abs(cols.float().mean() - x) <= 0.5 and abs(rows.float().mean() - y) <= 0.5
    assert len(rows) == (2 * half + 1) ** 2


GRID = torch.tensor([[x, y] for y in (16.0, 46.0, 76.0, 106.0) for x in (16.0, 46.0, 76.0)])  # 12 spots 30 px apart


def spread_joints(n: int, k: int, seed: int) -> torch.Tensor:
    """(n, k, 2) joints on distinct grid spots per image (boxes of half-size ≤ 14 cannot reach another spot)."""
    g = gen(seed)
    return torch.stack([GRID[torch.randperm(len(GRID), generator=g)[:k]] for _ in range(n)])


def covered(mask: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
    """(N, K) bool: is each joint's pixel masked."""
    x, y = joints[..., 0].long(), joints[..., 1].long()
    return mask[torch.arange(len(mask))[:, None], 0, y, x] > 0


@given(seed=st.integers(0, 10_000), num=st.integers(1, 7))
@settings(max_examples=15, deadline=None)
def test_joint_cutout_picks_valid_joints_without_replacement(seed, num):
    n, k = 32, 8
    joints = spread_joints(n, k, seed)
    valid = torch.rand(n, k, generator=gen(seed + 1)) < 0.6
    _, mask = joint_cutout(
        torch.ones(n, 3, H, W),
        joints,
        valid,
        num_joints=num,
        half_size_frac=px(10, 14),
        jitter_frac=0.0,
        generator=gen(seed),
    )
    hit = covered(mask, joints)
    assert not (hit & ~valid).any()
    assert torch.equal(hit.sum(1), valid.sum(1).clamp(max=num))  # distinct joints: min(num, #valid) covered
    assert torch.equal(mask.sum((1, 2, 3)) > 0, valid.any(1))


def test_joint_cutout_jitter_is_centred_on_the_joint():
    joints = torch.tensor([[[48.0, 64.0]]]).expand(400, 1, 2)
    _, mask = joint_cutout(
        torch.ones(400, 1, H, W), joints, num_joints=1, half_size_frac=px(10, 10), jitter_frac=10 * PX, generator=gen(5)
    )
    rows, cols = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    area = mask.sum((1, 2, 3))
    com = torch.stack([(mask[:, 0] * cols).sum((1, 2)) / area, (mask[:, 0] * rows).sum((1, 2)) / area], -1)
    assert torch.allclose(com.mean(0), torch.tensor([48.0, 64.0]), atol=1.5)
    assert 7 < com[:, 0].std() < 13 and 7 < com[:, 1].std() < 13


# ---------------------------------------------------------------- cut-occlude and keypoint-mix
def test_cut_occlude_pastes_another_image_centred_on_this_joint():
    images = coded_images(2)
    joints = torch.tensor([[[10.0, 120.0]], [[90.0, 30.0]]])  # one joint each: bottom-left / right edge
    out, mask = cut_occlude(images, joints, num_patches=1, half_size_frac=px(12, 12), generator=gen())
    for i, j in ((0, 1), (1, 0)):  # with two images the source is always the other one
        (dx, dy), (sx, sy) = joints[i, 0].long().tolist(), joints[j, 0].long().tolist()
        rows, cols = torch.nonzero(mask[i, 0], as_tuple=True)
        assert mask[i, 0, dy, dx] == 1
        assert torch.all(out[i, 0, rows, cols] == j + 1)  # content of the other image
        assert torch.equal(out[i, 1, rows, cols] - 1 - rows, torch.full_like(rows, sy - dy).float())
        assert torch.equal(out[i, 2, rows, cols] - 1 - cols, torch.full_like(cols, sx - dx).float())
        # both boxes clipped consistently: offsets = the part of ±12 valid at the source AND the destination
        lo_x, hi_x = max(-12, -sx, -dx), min(12, W - 1 - sx, W - 1 - dx)
        lo_y, hi_y = max(-12, -sy, -dy), min(12, H - 1 - sy, H - 1 - dy)
        assert (cols - dx).min() == lo_x and (cols - dx).max() == hi_x
        assert (rows - dy).min() == lo_y and (rows - dy).max() == hi_y
        assert len(rows) == (hi_x - lo_x + 1) * (hi_y - lo_y + 1)
        assert mask[i, 0, dx % H, dy % W] == 0  # nothing at (row = x, col = y)
    assert torch.equal(out[mask.expand_as(out) == 0], images[mask.expand_as(out) == 0])
    assert (out != 0).all()  # nothing silently zeroed at the borders


@given(x=st.floats(20, 75), y=st.floats(20, 107), sx=st.floats(0, W - 1), sy=st.floats(0, H - 1))
@FAST
def test_cut_occlude_centre_of_mass_is_the_joint(x, y, sx, sy):
    joints = torch.tensor([[[x, y]], [[sx, sy]]])
    _, mask = cut_occlude(torch.ones(2, 3, H, W), joints, num_patches=1, half_size_frac=px(12, 12), generator=gen())
    if abs(sx - x) + abs(sy - y) < 1e-3 or not (12 <= sx < W - 13 and 12 <= sy < H - 13):
        return  # source box clipped: the pasted box is legitimately off-centre
    rows, cols = torch.nonzero(mask[0, 0], as_tuple=True)
    assert abs(cols.float().mean() - x) <= 0.5 and abs(rows.float().mean() - y) <= 0.5


@given(seed=st.integers(0, 10_000))
@settings(max_examples=10, deadline=None)
def test_cut_occlude_sources_are_valid_joints_of_other_images(seed):
    n, k = 6, 5
    joints = spread_joints(n, k, seed)
    valid = torch.rand(n, k, generator=gen(seed + 1)) < 0.7
    out, mask = cut_occlude(
        coded_images(n), joints, valid, num_patches=2, half_size_frac=px(10, 14), generator=gen(seed)
    )
    hit = covered(mask, joints)
    assert not (hit & ~valid).any()
    for i, j in torch.nonzero(hit).tolist():
        x, y = joints[i, j].long().tolist()
        src_img = int(out[i, 0, y, x]) - 1
        src_pt = torch.tensor([out[i, 2, y, x] - 1, out[i, 1, y, x] - 1])
        assert src_img != i
        matches = (joints[src_img] == src_pt).all(-1) & valid[src_img]
        assert matches.any()  # the pasted box was centred on a valid joint of the other image


@given(seed=st.integers(0, 10_000))
@settings(max_examples=10, deadline=None)
def test_keypoint_mix_swaps_in_a_different_joint_of_another_image(seed):
    n, k = 6, 5
    joints = spread_joints(n, k, seed)
    valid = torch.rand(n, k, generator=gen(seed + 1)) < 0.8
    out, mask = keypoint_mix(
        coded_images(n), joints, valid, num_joints=3, half_size_frac=px(10, 14), generator=gen(seed)
    )
    hit = covered(mask, joints)
    assert not (hit & ~valid).any()
    assert torch.equal(hit.sum(1), valid.sum(1).clamp(max=3))
    for i, j in torch.nonzero(hit).tolist():
        x, y = joints[i, j].long().tolist()
        src_img = int(out[i, 0, y, x]) - 1
        src_pt = torch.tensor([out[i, 2, y, x] - 1, out[i, 1, y, x] - 1])
        src_joint = torch.nonzero((joints[src_img] == src_pt).all(-1) & valid[src_img])
        assert src_img != i and len(src_joint) == 1 and int(src_joint) != j


# ---------------------------------------------------------------- random boxes
def hole_centres(mask: torch.Tensor, half: int) -> torch.Tensor:
    """Centres (N, 2) of single boxes of a known half-size, recovered from their (possibly clipped) extent."""

    def centre(hit: torch.Tensor) -> torch.Tensor:  # (N, L) bool along one axis
        first = hit.float().argmax(1)
        last = hit.shape[1] - 1 - hit.flip(1).float().argmax(1)
        return torch.where(first > 0, first + half, last - half)

    m = mask[:, 0] > 0
    return torch.stack([centre(m.any(1)), centre(m.any(2))], -1)


@pytest.mark.parametrize("fn", [cutout, cutmix])
def test_random_box_centres_cover_the_whole_tall_image(fn):
    images = torch.randn(240, 1, H, W, generator=gen())
    out, mask = fn(images, holes=1, half_size_frac=px(10, 10), generator=gen(1))
    centres = hole_centres(mask, 10)
    assert centres[:, 0].min() >= 0 and centres[:, 0].max() < W and centres[:, 1].min() >= 0
    assert centres[:, 1].max() < H
    for axis, size in ((0, W), (1, H)):
        quarters = torch.bincount((centres[:, axis] * 4 // size), minlength=4)
        assert (quarters > 35).all(), quarters  # ~60 each; the reference's swap gives y < 96: empty last quarter
    assert mask[:, 0, 115:].sum() > 0  # rows ≥ 115 need a centre ≥ 96, beyond the swapped range
    m = mask > 0
    assert torch.equal(torch.where(m, 0.0, out), torch.where(m, 0.0, images))  # untouched outside the mask
    changed = torch.where(m, out == 0, True) if fn is cutout else torch.where(m, out != images, True)
    assert changed.all()


def test_cutmix_copies_the_same_location_of_another_image():
    images = coded_images(4)
    out, mask = cutmix(images, holes=3, generator=gen(2))
    m = mask[:, 0] > 0
    for i in range(4):
        src = out[i, 0][m[i]] - 1
        assert (src != i).all() and (src == src[0]).all()
        assert torch.equal(out[i, 1:, m[i]], images[i, 1:, m[i]])  # same rows and columns


# ---------------------------------------------------------------- adaptive keypoint masking
@given(
    peaks=st.lists(st.floats(0, 1), min_size=12, max_size=12), valid=st.lists(st.booleans(), min_size=12, max_size=12)
)
@FAST
def test_relative_responses_formula(peaks, valid):
    p = torch.tensor(peaks).view(2, 6)
    v = torch.tensor(valid).view(2, 6)
    r = relative_responses(p, v)
    for i in range(2):
        vals = p[i][v[i]]
        for j in range(6):
            if not v[i, j] or len(vals) == 0 or vals.max() == vals.min():
                assert r[i, j] == 0
            else:
                assert abs(r[i, j] - (p[i, j] - vals.min()) / (vals.max() - vals.min())) < 1e-6
    assert torch.equal(relative_responses(torch.full((3, 4), 0.7)), torch.zeros(3, 4))


def test_akm_counts_follow_the_share_of_easy_joints_and_masks_sit_on_easy_joints():
    k = 10
    joints = spread_joints(6, k, 0)
    easy_counts = [2, 4, 6, 8, 10, 3]
    peaks = torch.full((6, k), 0.3)
    for i, e in enumerate(easy_counts):
        peaks[i, torch.randperm(k, generator=gen(i))[:e]] = 0.9
    peaks[4, 0] = 0.5  # sample 4: all joints easy at tau=0.5 (r = 0 only for this one → not easy)
    peaks[5] *= 0.15  # sample 5: max peak 0.135 < 0.2 → extremely difficult
    out, mask, counts = adaptive_keypoint_mask(
        torch.ones(6, 3, H, W),
        joints,
        peaks,
        tau=0.5,
        max_masks=5,
        min_masks=1,
        half_size_frac=px(10, 14),
        generator=gen(),
    )
    assert counts.tolist() == [1, 2, 3, 4, 5, 1]  # round(5·#easy/10); [4]: 9 easy → round(4.5) = 5; [5]: min
    easy = relative_responses(peaks) >= 0.5
    hit = covered(mask, joints)
    assert not (hit & ~easy).any() and torch.equal(hit.sum(1), counts)
    assert torch.equal(out, torch.ones_like(out) * (1 - mask))


# ---------------------------------------------------------------- mixup and photometric
def test_mixup_formula_and_lambda_range():
    images = torch.randn(64, 3, 16, 12, generator=gen())
    mixed, lam, perm = mixup(images, generator=gen(1))
    assert torch.allclose(mixed, lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * images[perm])
    assert (lam >= 0.75).all() and (lam <= 1).all() and (perm != torch.arange(64)).all()
    _, lam_u, _ = mixup(images, mode="uniform", min_keep=0.4, generator=gen(2))
    assert lam_u.min() >= 0.4 and lam_u.max() <= 1 and lam_u.max() - lam_u.min() > 0.4
    _, lam_b, _ = mixup(torch.zeros(4000, 1, 1, 1), alpha=0.2, min_keep=0.0, generator=gen(3))
    # Beta(0.2, 0.2): mean 1/2, variance 1 / (4 · 1.4) ≈ 0.179, mass piled at both ends
    assert abs(lam_b.mean() - 0.5) < 0.03 and abs(lam_b.var() - 0.1786) < 0.015
    assert ((lam_b < 0.05) | (lam_b > 0.95)).float().mean() > 0.5


def test_photometric_stays_in_range_and_is_identity_at_zero_strength():
    rgb = torch.rand(4, 3, 16, 12, generator=gen()) * 255
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    images = (rgb - mean) / std
    assert torch.allclose(photometric(images, MEAN, STD, strength=0.0, generator=gen()), images, atol=1e-5)
    out = photometric(images, MEAN, STD, noise_std=5.0, generator=gen(1)) * std + mean
    assert out.min() >= -1e-3 and out.max() <= 255 + 1e-3 and not torch.allclose(out, rgb, atol=1.0)
    bright = photometric(images, MEAN, STD, contrast=0.0, saturation=0.0, generator=gen(2)) * std + mean
    ratio = bright.sum((1, 2, 3)) / rgb.sum((1, 2, 3))
    assert (ratio > 0.69).all() and (ratio < 1.31).all()


# ---------------------------------------------------------------- paths, determinism, purity
@pytest.mark.parametrize(
    "name", sorted(set(AUGMENTS.names()) - {"none"}) + ["cut_occlude+cutout", "joint_cutout+cutmix"]
)
def test_paths_are_deterministic_and_pure(name):
    images = torch.randn(4, 3, 64, 48, generator=gen())
    joints = torch.rand(4, 5, 2, generator=gen(1)) * torch.tensor([48.0, 64.0])
    valid = torch.ones(4, 5, dtype=torch.bool)
    peaks = torch.rand(4, 5, generator=gen(2))
    before = [t.clone() for t in (images, joints, valid, peaks)]
    path = AugmentPath(name, {"photometric": {"mean": MEAN, "std": STD}} if name == "photometric" else {})
    a = apply_path(path, images, joints, valid, peaks, gen(7))
    b = apply_path(path, images, joints, valid, peaks, gen(7))
    c = apply_path(path, images, joints, valid, peaks, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == images.shape
    assert all(torch.equal(x, y) for x, y in zip(before, (images, joints, valid, peaks)))


def test_composite_path_applies_components_in_order_with_per_component_kwargs():
    images = torch.randn(4, 3, 64, 48, generator=gen())
    joints = torch.rand(4, 5, 2, generator=gen(1)) * torch.tensor([48.0, 64.0])
    path = AugmentPath.parse({"name": "joint_cutout+cutmix", "kwargs": {"cutmix": {"holes": 2}}})
    assert path.components == ("joint_cutout", "cutmix")
    g = gen(4)
    expected = cutmix(joint_cutout(images, joints, generator=g)[0], holes=2, generator=g)[0]
    assert torch.equal(apply_path(path, images, joints, None, None, gen(4)), expected)
    with pytest.raises(KeyError):
        AugmentPath("joint_cutout+cutmux")
    with pytest.raises(TypeError):
        AugmentPath("cutout", {"cutout": {"hole": 3}})
    with pytest.raises(KeyError):
        AugmentPath("cutout", {"cutmix": {"holes": 3}})
    with pytest.raises(TypeError):
        AugmentPath("cutout+photometric")  # photometric needs mean and std
    with pytest.raises(ValueError):
        apply_path("adaptive_mask", images, joints, None, None, gen())
    assert check_path("cut_occlude+cutout") == AugmentPath("cut_occlude+cutout")
    assert torch.equal(apply_path("none", images, None, None, None, gen()), images)
    assert len({path, AugmentPath.parse({"name": "joint_cutout+cutmix", "kwargs": {"cutmix": {"holes": 2}}})}) == 1
