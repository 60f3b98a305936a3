"""Slice-interpolation figures: panel layout, titles and physical aspect of the comparison grid, zoom
rows and box, the ablation curves, the calibration plot and the table figure (tiny inputs, Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ctlib.data import phantom, windows  # noqa: E402
from ctlib.studies.interp import figures as interp_figures  # noqa: E402
from ctlib.studies.interp import thick_slices


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _pair() -> thick_slices.ThickThinPair:
    volume = phantom.ct_phantom(shape=(24, 20, 16), spacing_mm=(2.0, 1.0, 0.5), seed=0)
    return thick_slices.thick_thin_pair(volume, 6)


def test_farthest_from_thick_picks_a_slab_boundary_near_the_middle():
    # factor 6, slab 6: thick centres at 2.5, 8.5, 14.5, 20.5 on 24 thin slices
    assert interp_figures.farthest_from_thick(np.array([2.5, 8.5, 14.5, 20.5]), 24) in (11, 12)
    assert interp_figures.farthest_from_thick(np.array([0.0, 4.0]), 5) == 2


def test_comparison_grid_layout_titles_and_physical_aspect():
    pair = _pair()
    error = pair.thin.with_array(np.abs(pair.thin.array - 10.0))
    fig = interp_figures.comparison_grid(
        {"thick": pair.thick, "truth": pair.thin}, windows.SOFT_TISSUE, maps={"|error|": error},
        views=("axial", "coronal", "sagittal"), centre=(11, 10, 8))
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 3 * 3 and len(fig.axes) == 3 * 3 + 1  # one colour bar for the maps
    grid = np.array(image_axes).reshape(3, 3)
    assert [ax.get_title() for ax in grid[0]] == ["thick", "truth", "|error|"]
    assert [ax.get_ylabel() for ax in grid[:, 0]] == ["axial", "coronal", "sagittal"]
    # aspect = row spacing / column spacing: axial dy/dx, coronal dz/dx (thick: 6 times thicker), sagittal
    # dz/dy
    assert grid[0, 1].get_aspect() == pytest.approx(1.0 / 0.5)
    assert grid[1, 1].get_aspect() == pytest.approx(2.0 / 0.5)
    assert grid[1, 0].get_aspect() == pytest.approx(12.0 / 0.5)
    assert grid[2, 1].get_aspect() == pytest.approx(2.0 / 1.0)
    # the thick coronal has one row per thick slice, the same physical height as the thin one
    assert grid[1, 0].images[0].get_array().shape == (4, 16)
    assert grid[1, 1].images[0].get_array().shape == (24, 16)
    # the axial thick panel shows the thick slice nearest thin slice 11 (thick centres 2.5, 8.5, ...: slice 1)
    np.testing.assert_array_equal(grid[0, 0].images[0].get_array(), pair.thick.array[1])
    assert grid[0, 2].images[0].get_cmap().name == interp_figures.MAP_CMAP
    assert grid[0, 2].images[0].get_clim() == (0.0, 200.0)
    assert grid[0, 1].images[0].get_clim() == (windows.SOFT_TISSUE.low, windows.SOFT_TISSUE.high)
    # maps are blanked outside map_mask
    mask = np.zeros(pair.thin.shape, dtype=bool)
    mask[:, :10] = True
    fig = interp_figures.comparison_grid(
        {"truth": pair.thin}, windows.FULL, maps={"|error|": error}, map_mask=mask, centre=(11, 10, 8)
    )
    shown = fig.axes[1].images[0].get_array()
    assert (shown[10:] == 0).all() and (shown[:10] == error.array[11, :10]).all()


def test_comparison_grid_zoom_rows_and_box():
    pair = _pair()
    fig = interp_figures.comparison_grid({"linear": pair.thin, "truth": pair.thin}, windows.FULL,
                                         views=("axial", "coronal"), zoom=(0.25, 0.75, 0.5, 1.0))
    grid = np.array([ax for ax in fig.axes if ax.images]).reshape(4, 2)
    assert [ax.get_ylabel() for ax in grid[:, 0]] == ["axial", "axial (zoom)", "coronal", "coronal (zoom)"]
    assert grid[1, 0].images[0].get_array().shape == (10, 8)  # half of 20 rows, half of 16 columns
    np.testing.assert_array_equal(grid[1, 0].images[0].get_array(), pair.thin.array[12, 5:15, 8:16])
    # coronal zoom crops the picture (head up), not the array order
    np.testing.assert_array_equal(grid[3, 0].images[0].get_array(), pair.thin.array[::-1, 10, :][6:18, 8:16])
    assert len(grid[0, 0].patches) == 1 and not grid[0, 1].patches  # the box, on the first column only
    with pytest.raises(ValueError, match="zoom must be"):
        interp_figures.comparison_grid({"a": pair.thin}, windows.FULL, zoom=(0.5, 0.2, 0.0, 1.0))
    with pytest.raises(ValueError, match="views must be"):
        interp_figures.comparison_grid({"a": pair.thin}, windows.FULL, views=("oblique",))


def _summary() -> pd.DataFrame:
    rows = []
    for eta in (0.0, 1.0):
        for steps in (2, 5, 10):
            for k in (1, 2):
                rows.append({"sampler": "ddim", "steps": steps, "eta": eta, "samples": k,
                             "psnr_full_db": 20 + steps / 10 + k + eta, "seconds": steps * k})
    rows.append(
        {"sampler": "ddpm", "steps": 1000, "eta": 1.0, "samples": 1, "psnr_full_db": 25.0, "seconds": 900}
    )
    return pd.DataFrame(rows)


def test_ablation_curves_draw_one_line_per_sampler_and_eta():
    fig = interp_figures.ablation_curves(_summary())
    ax_steps, ax_k, ax_cost = fig.axes
    assert ax_steps.get_title() == "(a) PSNR (dB) vs steps, K = 1" and ax_steps.get_xscale() == "log"
    assert [t.get_text() for t in ax_steps.get_xticklabels()] == ["2", "5", "10", "1000"]
    labels = [line.get_label() for line in ax_steps.get_lines()]
    assert labels == ["ddim, eta 0", "ddim, eta 1", "ddpm, eta 1"]
    np.testing.assert_allclose(ax_steps.get_lines()[0].get_ydata(), [21.2, 21.5, 22.0])
    np.testing.assert_allclose(ax_k.get_lines()[1].get_xdata(), [1, 2])  # eta 1 at 10 steps
    np.testing.assert_allclose(ax_k.get_lines()[1].get_ydata(), [23.0, 24.0])
    np.testing.assert_allclose(ax_cost.get_lines()[0].get_ydata(), [10, 20])
    with pytest.raises(ValueError, match="lacks columns"):
        interp_figures.ablation_curves(_summary().drop(columns="seconds"))


def test_calibration_plot_and_table_figure():
    curve = pd.DataFrame({"std_hu": [1.0, 5.0, 9.0], "abs_error_hu": [2.0, 6.0, 20.0], "voxels": [3, 3, 3]})
    fig = interp_figures.calibration_plot(curve, 0.4321)
    assert fig.axes[0].get_title() == "Pearson r = 0.43" and len(fig.axes[0].get_lines()) == 2
    table = pd.DataFrame(
        {"psnr_full_db": [31.39, np.nan]}, index=pd.Index(["linear", "cubic"], name="method")
    )
    fig = interp_figures.table_figure({"(a) evaluation": table, "(b) ablation": _summary()}, caption="x6")
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["(a) evaluation", "(b) ablation"]
    cells = fig.axes[0].tables[0].get_celld()
    assert cells[(0, 0)].get_text().get_text() == "method" and cells[(1, 1)].get_text().get_text() == "31.39"
    assert cells[(2, 1)].get_text().get_text() == ""  # NaN left blank
    assert len(fig.axes[1].tables[0].get_celld()) == (len(_summary()) + 1) * _summary().shape[1]
