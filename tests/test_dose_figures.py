"""Dose figures: the overlay equals the viewer's pixels, panels and plots draw what they are given,
bad input is refused."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ctlib.data import windows  # noqa: E402
from ctlib.metrics import dose_scores  # noqa: E402
from ctlib.studies.dose import evaluation  # noqa: E402
from ctlib.studies.dose import figures as dose_figures  # noqa: E402
from ctlib.viz import render
from tests.test_dose_datasets import synthetic_patient  # noqa: E402

WINDOW = windows.get_window("soft_tissue")


def test_busiest_slice():
    mask = np.zeros((4, 5, 6), dtype=bool)
    mask[2, 1:4, 1:4] = True
    mask[1, 0, 0] = True
    assert [dose_figures.busiest_slice(mask, a) for a in range(3)] == [2, 1, 1]
    assert dose_figures.busiest_slice(np.zeros((4, 5, 6), dtype=bool), 1) == 2


def test_overlay_is_the_viewers_colorwash_and_isodose():
    p = synthetic_patient()
    ct, dose = p.ct_hu[4], p.dose_gy[4]
    rgb = dose_figures.dose_overlay_rgb(ct, dose, window=WINDOW, max_gy=70.0, isodose_levels_gy=[30.0])
    expected = render.gray_to_rgb(render.window_to_uint8(ct, WINDOW.low, WINDOW.high))
    render.dose_colorwash(expected, dose, 70.0, 0.35, 0.1, render.colormap_lut("turbo"))
    render.isodose_lines(expected, dose, [30.0], render.isodose_colors([30.0], 70.0))
    np.testing.assert_array_equal(rgb, expected)
    below = dose < 7.0  # under 10 % of the scale: the CT alone
    gray = render.window_to_uint8(ct, WINDOW.low, WINDOW.high)
    np.testing.assert_array_equal(rgb[below][:, 0], gray[below])
    with pytest.raises(ValueError, match="differ"):
        dose_figures.dose_overlay_rgb(ct, dose[:-1], window=WINDOW, max_gy=70.0)


def test_colorwash_panels_layout_and_checks():
    p = synthetic_patient()
    doses = {"planned": p.dose_gy, "predicted": p.dose_gy * 1.1}
    fig = dose_figures.colorwash_panels(p.ct_hu, doses, p.spacing_mm, centre=(4, 6, 6), window=WINDOW,
                                        isodose_levels_gy=[20.0], difference=("predicted", "planned"),
                                        difference_mask=p.possible_dose_mask)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 2 * 3  # two views x (two doses + the difference)
    assert [ax.get_title() for ax in image_axes[:3]] == ["planned", "predicted", "predicted - planned"]
    diff = image_axes[2].images[1].get_array()  # axial difference, masked outside the pdm
    np.testing.assert_allclose(
        diff.filled(0), np.where(p.possible_dose_mask[4], 0.1 * p.dose_gy[4], 0), rtol=1e-5
    )
    plt.close(fig)
    with pytest.raises(ValueError, match="shape"):
        dose_figures.colorwash_panels(
            p.ct_hu, {"x": p.dose_gy[:-1]}, p.spacing_mm, centre=(0, 0, 0), window=WINDOW
        )
    with pytest.raises(ValueError, match="difference"):
        dose_figures.colorwash_panels(p.ct_hu, doses, p.spacing_mm, centre=(0, 0, 0), window=WINDOW,
                                      difference=("a", "planned"))


def test_dvh_plot_draws_one_line_per_structure_and_dose():
    p = synthetic_patient()
    masks = evaluation.structure_masks(p)
    curves = {name: dose_scores.dvh_curves(d, masks, max_dose_gy=80.0)
              for name, d in (("planned", p.dose_gy), ("predicted", p.dose_gy * 0.9))}
    fig = dose_figures.dvh_plot(curves, title="t")
    ax = fig.axes[0]
    assert len(ax.lines) == 2 * 2 and [line.get_linestyle() for line in ax.lines] == ["-", "-", "--", "--"]
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), curves["planned"].volume_percent["PTV70"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "Brainstem",
        "PTV70",
        "planned",
        "predicted",
    ]
    plt.close(fig)
    with pytest.raises(ValueError, match="at most"):
        dose_figures.dvh_plot({str(i): curves["planned"] for i in range(5)})


def test_gamma_panels_mask_unevaluated_voxels():
    p = synthetic_patient()
    gamma_map = np.where(p.dose_gy > 7.0, 0.5, np.nan).astype(np.float32)
    fig = dose_figures.gamma_panels(
        p.ct_hu,
        {"mae": gamma_map},
        p.spacing_mm,
        centre=(4, 6, 6),
        window=WINDOW,
        pass_rates_percent={"mae": 97.25},
    )
    ax = fig.axes[0]
    assert ax.get_title() == "mae\n97.2 % pass"
    shown = ax.images[1].get_array()
    assert np.array_equal(np.ma.getmaskarray(shown), np.isnan(gamma_map[4]))
    plt.close(fig)


def test_score_bars_draws_anchors_as_lines():
    table = pd.DataFrame({"source": ["this study", "this study", "paper"], "patients": [40, 40, 100],
                          "dose_score_gy": [3.0, 2.5, 2.43], "dvh_score_gy": [2.0, 1.9, 1.48]},
                         index=["mae", "dvh", "winner"])
    fig = dose_figures.score_bars(table)
    ax = fig.axes[0]
    assert [bar.get_height() for bar in ax.patches] == [3.0, 2.5]
    assert ax.lines[0].get_ydata()[0] == 2.43
    plt.close(fig)
    with pytest.raises(ValueError, match="lacks"):
        dose_figures.score_bars(table.drop(columns=["source"]))
