"""Client input that used to reach a 500 or a crash loop: it gets a 4xx naming the problem (issue: a loop you can
trust — the attacker's classes: degenerate boxes, oversized integers, non-ASCII digits)."""

from __future__ import annotations

import numpy as np
import pytest

from core.inputs import InputError, declared_length_exceeds, parse_boxes, parse_image_id, parse_json
from models.geometry import Size, person_crop_affine


@pytest.mark.parametrize("box", [[0, 0, 1e-300, 1e-300], [10, 10, 0.5, 40], [10, 10, 40, 1e-9]])
def test_boxes_below_one_pixel_are_refused(box) -> None:
    with pytest.raises(InputError) as err:
        parse_boxes([box], 100, 100, 8)
    assert err.value.status == 422 and err.value.code == "box_too_small"


def test_smallest_accepted_box_gives_a_finite_crop() -> None:
    boxes = parse_boxes([[3, 4, 1, 1]], 100, 100, 8)
    assert boxes is not None
    affine = person_crop_affine(boxes[0], Size(48, 64), 1.25)
    assert np.isfinite(affine).all()


@pytest.mark.parametrize("value", ["²", "①", "١٢", "9" * 5000, 2**63, "-1", " 12x", True, 1.5])
def test_bad_image_ids_are_422(value) -> None:
    with pytest.raises(InputError) as err:
        parse_image_id(value)
    assert err.value.status == 422 and err.value.code == "invalid_image_id"


def test_good_image_ids() -> None:
    assert parse_image_id(" 42 ") == 42 and parse_image_id(2**63 - 1) == 2**63 - 1 and parse_image_id("") is None


@pytest.mark.parametrize("body", [b"[" + b"9" * 5000 + b"]", b'{"boxes": [[1, 2, 3, ' + b"7" * 4400 + b"]]}"])
def test_integers_over_the_int_string_limit_are_malformed_json(body) -> None:
    with pytest.raises(InputError) as err:
        parse_json(body, "boxes")
    assert err.value.status == 400 and err.value.code == "malformed_json"


@pytest.mark.parametrize(
    ("header", "limit", "exceeds"),
    [("²", 10, False), ("9" * 5000, 10, True), ("00012", 10, True), ("10", 10, False), (None, 10, False)],
)
def test_declared_content_length(header, limit, exceeds) -> None:
    assert declared_length_exceeds(header, limit) is exceeds
