"""Marker detection on real films: burned-in text, side markers and boxes found, lungs left alone;
drawn text and boxes found; border/corner masks; the --mask-markers step."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_core.io.imaging import load_xray
from cxr_core.models.lungs import read_mask
from cxr_core.safety.markers import Marker, border_mask, corner_masks, detect_markers, marker_mask, mask_markers

FIX = Path(__file__).parent / "fixtures" / "audit"

#: Burned-in things on the real fixtures, boxed by eye (rows, cols; end exclusive).
TRUTH = {
    "kermany224_NORMAL2-IM-0252-0001": [("marker", (20, 0, 48, 16))],               # "R"
    "nih14_00030006_002": [("text", (10, 10, 22, 62)), ("marker", (11, 224, 23, 237))],  # "PORTABLE", "L"
    "hannover_21982772": [("text", (0, 338, 12, 420)), ("marker", (384, 470, 402, 486)),  # "Bettaufnahme", "L"
                          ("box", (0, 0, 419, 34))],                                     # white frame strip
    "hannover_c0f74558": [("marker", (386, 472, 408, 490)), ("text", (412, 477, 427, 498))],  # "L", "pa"
    "hannover_bd3ceeb6": [("text", (17, 38, 35, 118)), ("marker", (39, 421, 63, 440))],  # "Auf Station", "L"
}
#: Films with expert lung masks whose lung fields hold no burned-in marks (b343e657 is left out: an
#: ECG electrode clip over its left lung is a bright, sharp object and is reported like a marker).
CLEAN_LUNGS = ("hannover_21982772", "hannover_c0f74558", "hannover_bd3ceeb6", "hannover_61bc50d1", "hannover_4fed5061")


def film(stem: str) -> np.ndarray:
    return load_xray(FIX / f"{stem}.png").pixels


def inside(found: Marker, truth: tuple[int, int, int, int]) -> float:
    """Share of the detection's box that lies inside the truth box."""
    r0, c0 = max(found.box[0], truth[0]), max(found.box[1], truth[1])
    r1, c1 = min(found.box[2], truth[2]), min(found.box[3], truth[3])
    return max(0, r1 - r0) * max(0, c1 - c0) / found.area


@pytest.mark.parametrize("stem", sorted(TRUTH))
def test_real_burned_in_marks_are_found_with_their_kind(stem):
    found = detect_markers(film(stem))
    for kind, box in TRUTH[stem]:
        hits = [m for m in found if inside(m, box) >= 0.6]
        assert hits, f"{kind} at {box} not found in {stem}: {found}"
        assert kind in {m.kind for m in hits}


@pytest.mark.parametrize("stem", CLEAN_LUNGS)
def test_nothing_is_reported_inside_the_lung_fields(stem):
    pixels = film(stem)
    lungs = read_mask(FIX / f"{stem}_lungs_v7.png", pixels.shape)
    found = detect_markers(pixels)
    assert found  # each of these films has burned-in marks ...
    assert not (marker_mask(pixels.shape, found, pad=0) & lungs).any()  # ... none of them over the lungs


def drawn_film():
    """A real film with text, a side marker, a black privacy box and a grey plate drawn on it."""
    img8 = np.round(film("hannover_4fed5061") * 255).astype(np.uint8)
    cv2.putText(img8, "PORTABLE", (150, 400), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 2)  # (x, y) for OpenCV
    cv2.putText(img8, "R", (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 255, 2)
    img8[330:380, 380:470] = 0      # privacy box
    img8[240:280, 20:60] = 128      # uniform plate
    drawn = {"text": (380, 145, 406, 245), "marker": (35, 15, 66, 45), "box": (328, 378, 382, 472),
             "plate": (238, 18, 282, 62)}
    return img8.astype(np.float32) / 255, drawn


def test_drawn_text_marker_and_boxes_are_found():
    pixels, drawn = drawn_film()
    found = detect_markers(pixels)
    for name, box in drawn.items():
        kind = "box" if name == "plate" else name
        assert any(m.kind == kind and inside(m, box) >= 0.6 for m in found), f"drawn {name} at {box} missing: {found}"


def test_a_clean_smooth_image_has_no_markers():
    rows, cols = np.mgrid[0:300, 0:260]
    smooth = (0.4 + 0.3 * np.sin(rows / 30.0) * np.cos(cols / 25.0)).astype(np.float32)
    noisy = np.clip(smooth + np.random.default_rng(0).normal(0, 0.02, smooth.shape), 0, 1).astype(np.float32)
    assert detect_markers(noisy) == []


def test_masks_cover_the_border_band_and_corners():
    band = border_mask((100, 200))
    assert band[0].all() and band[:, -1].all() and not band[50, 100]
    assert band[:8].all() and not band[8, 100]  # 8 % of the shorter side
    corners = corner_masks((100, 200))
    assert corners["top_right"][0, 199] and not corners["top_right"][0, 0]
    assert all(m.sum() == 20 * 20 for m in corners.values())
    assert marker_mask((10, 10), [Marker("text", (2, 3, 4, 6))], pad=0).sum() == 6


def test_mask_markers_blacks_out_markers_and_border_without_touching_the_input():
    pixels, drawn = drawn_film()
    before = pixels.copy()
    black = mask_markers(pixels, method="black")
    np.testing.assert_array_equal(pixels, before)
    assert black[border_mask(pixels.shape)].max() == 0
    r0, c0, r1, c1 = drawn["text"]
    assert black[r0 + 5:r1 - 5, c0 + 5:c1 - 5].max() == 0
    untouched = ~marker_mask(pixels.shape, detect_markers(pixels)) & ~border_mask(pixels.shape)
    np.testing.assert_array_equal(black[untouched], pixels[untouched])


def test_mask_markers_inpaints_so_the_drawn_marks_are_gone():
    pixels, drawn = drawn_film()
    clean = mask_markers(pixels)  # inpaint
    r0, c0, r1, c1 = drawn["text"]
    assert clean[r0:r1, c0:c1].max() < 0.9 < pixels[r0:r1, c0:c1].max()
    left = [m for m in detect_markers(clean) if m.kind != "box" and inside(m, drawn["text"]) > 0]
    assert left == []
    with pytest.raises(ValueError, match="method must be 'inpaint' or 'black', got 'blur'"):
        mask_markers(pixels, method="blur")
    with pytest.raises(ValueError, match=r"expected \(H, W\) grayscale pixels, got shape \(4, 4, 3\)"):
        detect_markers(np.zeros((4, 4, 3)))


def test_prepare_applies_the_pixel_step_for_training_and_inference_alike():
    from cxr_core.models.preprocess import prepare, prepare_batch
    from cxr_core.models.zoo import get_spec

    spec = get_spec("efficientnetv2b0").with_overrides(input_size=64)
    pixels, _ = drawn_film()
    stepped = prepare(pixels, spec, pixel_step=mask_markers)
    np.testing.assert_array_equal(stepped, prepare(mask_markers(pixels), spec))
    assert not np.array_equal(stepped, prepare(pixels, spec))
    np.testing.assert_array_equal(prepare_batch([pixels], spec, pixel_step=mask_markers)[0], stepped)
