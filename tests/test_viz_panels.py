"""The one way figures draw a plane at its physical aspect (ctlib.viz.panels) and the window grid."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ctlib.data import phantom, windows  # noqa: E402
from ctlib.viz import panels, view_state  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize(("view", "expected"), [("axial", (1.0, 0.5)), ("coronal", (2.5, 0.5)),
                                                ("sagittal", (2.5, 1.0))])
def test_plane_spacing_and_aspect_per_view(view, expected):
    assert view_state.plane_spacing_mm(view, (2.5, 1.0, 0.5)) == expected
    assert panels.plane_aspect(view, (2.5, 1.0, 0.5)) == pytest.approx(expected[0] / expected[1])


def test_unknown_view_is_refused():
    with pytest.raises(ValueError, match="view must be one of"):
        panels.plane_aspect("oblique", (1.0, 1.0, 1.0))


def test_show_plane_sets_aspect_origin_and_passes_imshow_options():
    fig, ax = plt.subplots()
    image = np.arange(12.0).reshape(3, 4)
    handle = panels.show_plane(ax, image, "coronal", (3.0, 1.0, 0.75), head_up=True, cmap="gray", vmin=-1.0)
    assert ax.get_aspect() == pytest.approx(4.0)
    assert handle.origin == "lower" and handle.get_cmap().name == "gray" and handle.norm.vmin == -1.0
    handle = panels.show_plane(ax, image, "axial", (3.0, 1.0, 0.75))
    assert handle.origin == "upper" and ax.get_aspect() == pytest.approx(4.0 / 3.0)


def test_window_grid_draws_axial_then_head_up_coronal():
    volume = phantom.ct_phantom(shape=(8, 12, 10), spacing_mm=(2.0, 1.0, 0.5), seed=0)
    fig = panels.window_grid({"a": volume}, [windows.MEDIASTINUM, windows.LUNG])
    axes = fig.axes
    assert len(axes) == 3
    assert [ax.images[0].origin for ax in axes] == ["upper", "upper", "lower"]
    assert [ax.get_aspect() for ax in axes] == pytest.approx([2.0, 2.0, 4.0])
    assert axes[1].images[0].norm.vmin == windows.LUNG.low
