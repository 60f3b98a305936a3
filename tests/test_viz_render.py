"""Pure rendering of the slice viewer's panes (ctlib.viz.render) on tiny arrays and volumes."""

from __future__ import annotations

import numpy as np
import pytest

from ctlib.data.windows import MEDIASTINUM
from ctlib.io.orientation import reorient_to_lps
from ctlib.io.volume import Volume
from ctlib.viz import labels as label_tables
from ctlib.viz import render, view_state

YELLOW = (240, 228, 66)


def test_window_maps_low_to_0_high_to_255_and_clips():
    hu = np.array([[-2000.0, -160.0, 40.0, 240.0, 3000.0]], dtype=np.float32)
    out = render.window_to_uint8(hu, MEDIASTINUM.low, MEDIASTINUM.high)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 128, 255, 255]]
    with pytest.raises(ValueError, match="high > low"):
        render.window_to_uint8(hu, 10, 10)


def test_blend_labels_colours_exactly_the_labelled_pixels():
    gray = np.full((4, 5), 100, dtype=np.uint8)
    labels = np.zeros((4, 5), dtype=np.uint8)
    labels[1, 2], labels[3, 4] = 1, 2
    lut = np.array([[0, 0, 0, 0], [255, 0, 0, 255], [0, 0, 255, 255]], dtype=np.uint8)
    rgb = render.blend_labels(render.gray_to_rgb(gray), labels, lut, opacity=1.0)
    assert rgb[1, 2].tolist() == [255, 0, 0] and rgb[3, 4].tolist() == [0, 0, 255]
    untouched = labels == 0
    assert np.all(rgb[untouched] == 100)
    half = render.blend_labels(render.gray_to_rgb(gray), labels, lut, opacity=0.5)
    assert half[1, 2].tolist() == [178, 50, 50]  # 0.5 * 100 + 0.5 * 255 = 177.5 -> 178


def test_labels_over_gray_matches_blend_labels():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (33, 47), dtype=np.uint8)
    labels = rng.integers(0, 120, (33, 47)).astype(np.uint8)
    lut = np.zeros((120, 4), dtype=np.uint8)
    lut[:, :3] = label_tables.label_colors(119)
    lut[1:, 3] = 255
    for opacity in (0.0, 0.4, 1.0):
        expected = render.blend_labels(render.gray_to_rgb(gray), labels, lut, opacity)
        fast = render.labels_over_gray(gray, labels, lut, opacity)
        assert fast.shape == (33, 47, 4) and np.all(fast[..., 3] == 255)
        np.testing.assert_array_equal(fast[..., :3], expected)


def test_blend_masks_keeps_overlapping_structures():
    big = np.zeros((1, 6, 6), dtype=bool)
    big[0, 1:5, 1:5] = True
    small = np.zeros_like(big)
    small[0, 2:4, 2:4] = True
    label_set = label_tables.LabelSet.from_masks({"small": small, "big": big})
    assert label_set.names == {0: "big", 1: "small"}  # larger first, smaller blended on top
    rgb = render.blend_masks(render.gray_to_rgb(np.zeros((6, 6), np.uint8)), label_set.array[0],
                             label_set.lut_rgba, opacity=1.0)
    assert rgb[2, 2].tolist() == label_set.lut_rgba[1, :3].tolist()
    assert rgb[1, 1].tolist() == label_set.lut_rgba[0, :3].tolist()
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert label_set.present(label_set.array[0]) == [0, 1]
    assert label_set.pick(label_set.array[0, 2, 2]) == ["big", "small"]


def _disc_dose(n: int = 41, peak: float = 70.0) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - n // 2, xx - n // 2)
    return np.clip(peak * (1 - r / (n / 2)), 0, None).astype(np.float32)


def test_isodose_line_pixels_lie_on_the_level_boundary():
    dose = _disc_dose()
    levels, colors = [20.0, 50.0], [(0, 255, 0), (255, 0, 255)]
    rgb = render.isodose_lines(render.gray_to_rgb(np.zeros(dose.shape, np.uint8)), dose, levels, colors)
    padded = np.pad(dose, 1, mode="edge")
    neighbours_min = np.min(
        [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]], axis=0
    )
    for level, color in zip(levels, colors, strict=True):
        drawn = np.all(rgb == color, axis=-1)
        boundary = (dose >= level) & (neighbours_min < level)
        assert drawn.any()
        np.testing.assert_array_equal(drawn, boundary)  # the two levels' boundaries do not touch here


def test_dose_colorwash_respects_threshold():
    dose = _disc_dose()
    rgb = render.dose_colorwash(render.gray_to_rgb(np.full(dose.shape, 60, np.uint8)), dose, 70.0,
                                alpha=0.5, threshold_fraction=0.5)
    changed = np.any(rgb != 60, axis=-1)
    np.testing.assert_array_equal(changed, dose >= 35.0)
    assert render.colormap_lut("turbo").shape == (256, 3)


def test_crosshair_lines_and_gap():
    rgb = render.draw_crosshair(np.zeros((20, 30, 3), np.uint8), 5, 7, YELLOW)
    on = np.all(rgb == YELLOW, axis=-1)
    assert on[5].all() and on[:, 7].all() and on.sum() == 30 + 20 - 1
    gapped = render.draw_crosshair(np.zeros((20, 30, 3), np.uint8), 5, 7, YELLOW, gap_px=2)
    on = np.all(gapped == YELLOW, axis=-1)
    assert not on[3:8, 5:10].any() and on[5, 0] and on[5, 29] and on[0, 7] and on[19, 7]
    thick = np.all(
        render.draw_crosshair(np.zeros((20, 30, 3), np.uint8), 5, 7, YELLOW, width_px=2) == YELLOW, axis=-1
    )
    assert thick[5:7].all() and thick[:, 7:9].all() and thick.sum() == 2 * 30 + 2 * 20 - 4
    none = render.draw_crosshair(np.zeros((4, 4, 3), np.uint8), None, 10, YELLOW)
    assert not none.any()


def test_resample_for_aspect_repeats_the_thick_axis():
    image = np.arange(10 * 20).reshape(10, 20)
    out = render.resample_for_aspect(image, 2.5, 0.5)
    assert out.shape == (50, 20)
    np.testing.assert_array_equal(out[::5], image)
    np.testing.assert_array_equal(render.resample_for_aspect(image, 1.0, 1.0), image)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([1.0, -1.0, 1.0]), np.diag([-1.0, 1.0, -1.0]),
                                       np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]])])
def test_reorient_array_like_matches_reorient_to_lps(direction):
    rng = np.random.default_rng(1)
    volume = Volume(rng.normal(size=(3, 4, 5)).astype(np.float32), (2.0, 1.0, 0.5), direction=direction)
    labels = rng.integers(0, 9, size=(3, 4, 5)).astype(np.uint8)
    expected = reorient_to_lps(volume.with_array(labels.astype(np.float32))).array
    np.testing.assert_array_equal(view_state.reorient_array_like(labels, volume), expected)


def test_grid_index_maps_match_by_position():
    thin = Volume(np.zeros((12, 4, 4), np.float32), (1.0, 1.0, 1.0))
    thick = Volume(np.zeros((4, 4, 4), np.float32), (3.0, 1.0, 1.0), origin=(0.0, 0.0, 1.0))
    mk, mj, mi = view_state.grid_index_maps(thick, thin)
    assert mk.tolist() == [1, 4, 7, 10] and mj.tolist() == [0, 1, 2, 3] and mi.tolist() == [0, 1, 2, 3]
    shifted = Volume(np.zeros((4, 4, 4), np.float32), (1.0, 1.0, 1.0), origin=(-2.0, 0.0, 0.0))
    assert view_state.grid_index_maps(shifted, thin)[2].tolist() == [-1, -1, 0, 1]


def _state(volume: Volume, **kwargs) -> view_state.ViewerState:
    dv = view_state.DisplayVolume("v", reorient_to_lps(volume))
    return view_state.ViewerState([dv], dv.centre_mm(), MEDIASTINUM, **kwargs)


def test_panes_are_radiological_and_superior_up():
    # One bright voxel at the patient's right (x index 0), anterior (y 0), superior (z max), on an
    # LPS grid and on a LAS grid (rows stored posterior -> anterior): both must display the same.
    array = np.full((5, 6, 7), -1000.0, np.float32)
    array[4, 0, 0] = 1000.0
    lps = Volume(array, (2.0, 1.0, 1.0))
    las = Volume(
        array[:, ::-1, :], (2.0, 1.0, 1.0), origin=(0.0, 5.0, 0.0), direction=np.diag([1.0, -1.0, 1.0])
    )
    for volume in (lps, las):
        state = _state(volume, show_crosshair=False)
        state.position_mm = np.array([0.0, 0.0, 8.0])  # the bright voxel
        axial, coronal, sagittal = (render.render_pane(state, a) for a in view_state.AXES)
        assert axial.shape == (6, 7, 3) and axial[0, 0, 0] == 255 and axial[..., 0].sum() == 255
        assert (
            coronal.shape == (10, 7, 3) and np.all(coronal[0:2, 0, 0] == 255) and coronal[..., 0].sum() == 510
        )
        assert sagittal.shape == (10, 6, 3) and np.all(sagittal[0:2, 0, 0] == 255)


def test_thick_volume_coronal_pane_is_taller_than_its_slices():
    state = _state(Volume(np.zeros((8, 16, 16), np.float32), (5.0, 1.0, 1.0)))
    coronal = render.render_pane(state, "coronal")
    assert coronal.shape == (40, 16, 3) and render.render_pane(state, "axial").shape == (16, 16, 3)


def test_crosshair_sits_on_the_current_voxel_in_every_pane():
    volume = Volume(np.zeros((8, 16, 12), np.float32), (5.0, 1.0, 1.0))
    state = _state(volume, crosshair_gap=0.0)
    state.position_mm = state.volumes[0].position_of([2, 3, 9])
    axial = np.all(render.render_pane(state, "axial") == YELLOW, axis=-1)
    assert axial[3].all() and axial[:, 9].all() and axial.sum() == 12 + 16 - 1
    coronal = np.all(render.render_pane(state, "coronal") == YELLOW, axis=-1)
    row = (8 - 1 - 2) * 5 + 2  # slice 2 from the bottom, centre of its 5-row band
    assert coronal[row].all() and coronal[:, 9].all() and coronal.sum() == 12 + 40 - 1
    sagittal = np.all(render.render_pane(state, "sagittal") == YELLOW, axis=-1)
    assert sagittal[row].all() and sagittal[:, 3].all()


def test_position_from_click_inverts_the_display_mapping():
    volume = Volume(np.zeros((8, 16, 12), np.float32), (5.0, 1.0, 1.0))
    state = _state(volume)
    dv = state.volumes[0]
    start = dv.index_of(state.position_mm)[0]
    p = view_state.position_from_click(state, "coronal", 0, frac_x=(9 + 0.5) / 12, frac_y=(7.5 * 5) / 40)
    k, j, i = dv.index_of(p)[0]
    assert (k, j, i) == (8 - 1 - 7, start[1], 9)  # bottom band = slice 0 ... top band = slice 7
    p = view_state.position_from_click(state, "axial", 0, frac_x=0.0, frac_y=0.999)
    assert tuple(dv.index_of(p)[0]) == (start[0], 15, 0)


def test_render_base_is_cached_until_something_changes():
    state = _state(Volume(np.zeros((4, 8, 8), np.float32), (1.0, 1.0, 1.0)))
    first = render.render_base(state, "axial")
    assert render.render_base(state, "axial") is first
    state.window = MEDIASTINUM.__class__("custom", 0.0, 10.0)
    assert render.render_base(state, "axial") is not first


def test_label_outlines_draw_only_the_boundary():
    labels = np.zeros((7, 7), np.uint8)
    labels[1:6, 1:6] = 3
    lut = np.zeros((4, 4), np.uint8)
    lut[3] = (0, 255, 0, 255)
    rgb = render.label_outlines(render.gray_to_rgb(np.zeros((7, 7), np.uint8)), labels, lut)
    drawn = np.all(rgb == (0, 255, 0), axis=-1)
    expected = np.zeros((7, 7), bool)
    expected[1:6, 1:6] = True
    expected[2:5, 2:5] = False
    np.testing.assert_array_equal(drawn, expected)
    bits = label_tables.LabelSet.from_masks({"a": labels[None] > 0})
    rgb = render.label_outlines(
        render.gray_to_rgb(np.zeros((7, 7), np.uint8)), bits.array[0], bits.lut_rgba, "bits"
    )
    np.testing.assert_array_equal(np.any(rgb > 0, axis=-1), expected)
