"""The slice viewer notebook in a real browser: JupyterLab in headless Chromium through Playwright.

Runs a copy of ``notebooks/viz/2026-11-23_01_viewer.ipynb`` (defaults: the embedded chest CT with its
organ label map), then drives its first viewer as a user would: the axial slider (keyboard), the
window presets (click), a click on the coronal pane (ipyevents). After each step it checks the
decoded pixels of the pane the kernel sent, the slider values, and the legend against a viewer built
here, headless, on the same data. Saves ``test-artifacts/browser_viewer.png``.
"""

from __future__ import annotations

import io
import time

import lab
import numpy as np
import pytest
from PIL import Image

from ctlib import paths
from ctlib.io import reader
from ctlib.viz import labels as label_tables
from ctlib.viz import view_state, viewer

pytestmark = pytest.mark.browser

NOTEBOOK = "notebooks/viz/2026-11-23_01_viewer.ipynb"
AXIAL, CORONAL = "ctlib-viewer-axial-image", "ctlib-viewer-coronal-image"
SLIDER = "ctlib-viewer-axial-slider"
STEPS = 4
CLICK_FRACTION = (0.5, 0.12)  # (x, y) of the click on the coronal pane: near the top, i.e. superior


@pytest.fixture(scope="module")
def reference() -> viewer.Viewer:
    """The notebook's first viewer, built here without a browser (same data and defaults)."""
    ct = reader.read_volume(paths.embedded_path("chest_ct"))
    return viewer.Viewer({"chest CT": ct}, labels=paths.embedded_path("chest_ct_labels"),
                         label_names=paths.embedded_path("chest_ct_structures"), window="mediastinum")


def _expected_legend(reference: viewer.Viewer, axial_index: int) -> list[str]:
    reference.controls.sliders["axial"].value = axial_index
    return [entry.name for entry in reference.legend()]


def _pixels(page, css_class: str) -> np.ndarray:
    with Image.open(io.BytesIO(lab.image_bytes(page, css_class))) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.int16)


def _settled_src(page, css_class: str, quiet: float = 0.6, timeout: float = 20.0) -> str:
    """The image's src once it has not changed for ``quiet`` seconds (one update per key press)."""
    lab.wait_for_idle_kernel(page)
    src, since, deadline = lab.image_src(page, css_class), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"{css_class} kept changing for {timeout:.0f} s"
        time.sleep(0.1)
        now = lab.image_src(page, css_class)
        if now != src:
            src, since = now, time.monotonic()
    return src


def _legend_names(page) -> list[str]:
    legend = lab.find_widget(page, "ctlib-viewer-legend")
    return [text.strip() for text in legend.locator(".ctlib-viewer-legend-item").all_inner_texts()]


def _wait_for_legend(page, expected: list[str], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (shown := _legend_names(page)) != expected:
        assert time.monotonic() < deadline, f"legend shows {shown}, expected {expected}"
        time.sleep(0.1)


def _readout(page, css_class: str) -> int:
    return int(lab.slider_readout(page, css_class).replace("\u2212", "-"))  # ipywidgets shows a minus sign


def _wait_for_readout(page, css_class: str, predicate, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while not predicate(value := _readout(page, css_class)):
        assert time.monotonic() < deadline, f"{css_class} stays at {value}"
        time.sleep(0.1)
    return value


def _changed(before: np.ndarray, after: np.ndarray) -> float:
    assert before.shape == after.shape, (before.shape, after.shape)
    return float(np.abs(after - before).mean())


def test_viewer_notebook_slider_presets_legend_and_click(browser_page, jupyterlab_url, reference):
    page = browser_page
    lab.open_notebook(page, jupyterlab_url, NOTEBOOK)
    lab.run_all_cells(page, timeout=120)

    # The first viewer starts at the middle slice; its legend names the organs in view.
    start = _readout(page, SLIDER)
    assert start == reference.controls.sliders["axial"].value == 66
    lung_names = [
        n
        for n in label_tables.chest_ct_label_names(paths.embedded_path("chest_ct_structures")).values()
        if n.startswith("lung_")
    ]
    _wait_for_legend(page, _expected_legend(reference, start))
    assert set(lung_names) & set(_legend_names(page)), _legend_names(page)

    # The axial slider: new pixels from the kernel, the legend follows the slice.
    before_src = _settled_src(page, AXIAL)
    before = _pixels(page, AXIAL)
    assert lab.move_slider(page, SLIDER, STEPS) == str(start + STEPS)
    lab.wait_for_image_change(page, AXIAL, before_src)
    moved_src = _settled_src(page, AXIAL)
    moved = _pixels(page, AXIAL)
    assert _changed(before, moved) > 1.0
    _wait_for_legend(page, _expected_legend(reference, start + STEPS))
    far = 110  # the upper mediastinum: the brachiocephalic vessels come into the legend
    assert lab.set_slider_value(page, SLIDER, far) == str(far)
    assert _expected_legend(reference, far) != _expected_legend(reference, start + STEPS)
    _wait_for_legend(page, _expected_legend(reference, far))
    assert lab.move_slider(page, SLIDER, start + STEPS - far) == str(start + STEPS)
    _wait_for_legend(page, _expected_legend(reference, start + STEPS))
    moved_src = _settled_src(page, AXIAL)
    np.testing.assert_allclose(_pixels(page, AXIAL), moved, atol=2)  # back where it was, same pixels

    # The lung preset: a new window, new pixels, and the level/width sliders follow.
    lab.select_toggle(page, "ctlib-viewer-window", "lung")
    lab.wait_for_image_change(page, AXIAL, moved_src)
    lung_src = _settled_src(page, AXIAL)
    assert _changed(moved, _pixels(page, AXIAL)) > 5.0
    assert (_readout(page, "ctlib-viewer-level"), _readout(page, "ctlib-viewer-width")) == (-600, 1500)

    # A click near the top of the coronal pane moves the crosshair there: the axial slider follows.
    coronal = lab.find_widget(page, CORONAL)
    box = coronal.bounding_box()
    coronal.click(position={"x": CLICK_FRACTION[0] * box["width"], "y": CLICK_FRACTION[1] * box["height"]})
    clicked = view_state.position_from_click(reference.state, "coronal", 0, *CLICK_FRACTION)
    expected = int(reference.state.volumes[0].index_of(clicked)[0][0])
    value = _wait_for_readout(page, SLIDER, lambda v: v != start + STEPS)
    assert abs(value - expected) <= 1 and value > 100, (value, expected)
    lab.wait_for_image_change(page, AXIAL, lung_src)
    _settled_src(page, AXIAL)

    # room for the panes
    page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
    lab.find_widget(page, "ctlib-viewer").scroll_into_view_if_needed()
    shot = lab.save_screenshot(page, "browser_viewer.png")
    assert shot.stat().st_size > 0
    lab.close_notebook(page)
