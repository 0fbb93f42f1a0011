"""Property tests for the pure geometry: crops, inverses, flips — always on non-square sizes."""

import cv2
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.geometry import (
    Size,
    box_to_center_scale,
    compose_affine,
    crop_affine,
    flip_affine,
    flip_keypoints,
    invert_affine,
    person_crop_affine,
    transform_points,
    warp_image,
)
from models.schemas import COCO17, LSP14, MPII16

OUT = Size(96, 128)  # w, h: non-square on purpose

boxes = st.tuples(st.floats(0, 300), st.floats(0, 300), st.floats(5, 300), st.floats(5, 300))


@given(box=boxes, scale=st.floats(0.7, 1.3), rot=st.floats(-60, 60))
@settings(max_examples=60, deadline=None)
def test_crop_affine_roundtrip_and_centre(box, scale, rot):
    m = person_crop_affine(np.array(box), OUT, 1.25, scale, rot)
    pts = np.random.default_rng(0).uniform(-50, 400, (20, 2))
    back = transform_points(transform_points(pts, m), invert_affine(m))
    assert np.allclose(back, pts, atol=1e-3)
    centre = np.array([box[0] + box[2] / 2, box[1] + box[3] / 2])
    assert np.allclose(transform_points(centre[None], m)[0], [OUT.w / 2, OUT.h / 2], atol=1e-3)


@given(box=boxes)
@settings(max_examples=40, deadline=None)
def test_center_scale_keeps_aspect_and_contains_box(box):
    _center, size = box_to_center_scale(np.array(box), OUT.aspect, 1.25)
    assert abs(size[0] / size[1] - OUT.aspect) < 1e-4
    assert size[0] >= box[2] * 1.25 - 1e-3 and size[1] >= box[3] * 1.25 - 1e-3


def test_rotation_direction_matches_opencv():
    """A point right of the centre moves up on screen for a positive (counter-clockwise) rotation, like cv2."""
    m = crop_affine(np.array([50.0, 50.0]), np.array([100.0, 100.0]), 90.0, Size(100, 100))
    assert np.allclose(transform_points(np.array([[60.0, 50.0]]), m), [[50.0, 40.0]], atol=1e-6)
    ref = cv2.getRotationMatrix2D((50.0, 50.0), 90.0, 1.0)
    assert np.allclose(transform_points(np.array([[60.0, 50.0]]), ref), [[50.0, 40.0]], atol=1e-6)


def test_warp_image_moves_pixels_where_points_go():
    """A bright dot in a non-square image lands where transform_points says, for a rotated scaled crop."""
    img = np.zeros((180, 240, 3), np.uint8)
    dot = np.array([170.0, 60.0])  # x = column 170, y = row 60
    cv2.circle(img, (170, 60), 3, (255, 255, 255), -1)
    m = person_crop_affine(np.array([100, 20, 120, 100]), OUT, 1.25, 1.1, 25.0)
    crop = warp_image(img, m, OUT)
    assert crop.shape == (OUT.h, OUT.w, 3)
    ys, xs = np.nonzero(crop[..., 0] > 100)
    found = np.array([xs.mean(), ys.mean()])
    assert np.linalg.norm(found - transform_points(dot[None], m)[0]) < 1.0


def test_flip_matches_cv2_flip_and_swaps_pairs():
    img = np.zeros((50, 70, 3), np.uint8)
    img[10, 5] = 255
    flipped = cv2.flip(img, 1)
    ys, xs = np.nonzero(flipped[..., 0])
    assert np.allclose(transform_points(np.array([[5.0, 10.0]]), flip_affine(70)), [[xs[0], ys[0]]])
    kpts = np.arange(28, dtype=np.float32).reshape(14, 2)
    vis = np.arange(14)
    fk, fv = flip_keypoints(kpts, vis, 70, LSP14.flip_index)
    right_ankle, left_ankle = LSP14.index("right_ankle"), LSP14.index("left_ankle")
    assert fv[right_ankle] == left_ankle  # the new right ankle is the old left ankle, mirrored
    assert np.allclose(fk[right_ankle], [69 - kpts[left_ankle, 0], kpts[left_ankle, 1]])
    assert fk[LSP14.index("neck"), 0] == 69 - kpts[LSP14.index("neck"), 0]  # unpaired joints stay


def test_compose_affine_order():
    a = crop_affine(np.array([10.0, 20.0]), np.array([30.0, 40.0]), 10.0, OUT)
    f = flip_affine(OUT.w)
    p = np.array([[12.0, 25.0]])
    assert np.allclose(transform_points(p, compose_affine(f, a)), transform_points(transform_points(p, a), f))


def test_schema_flip_pairs_are_left_right():
    for schema in (COCO17, LSP14, MPII16):
        index = schema.flip_index
        assert np.array_equal(index[index], np.arange(schema.num_keypoints))  # an involution
        for a, b in schema.flip_pairs:
            na, nb = schema.keypoints[a], schema.keypoints[b]
            assert na.replace("left", "right") == nb or na.replace("right", "left") == nb, (na, nb)
