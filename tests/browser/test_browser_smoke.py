"""Smoke test of the browser-test machinery: JupyterLab in headless Chromium, ipywidgets round trips.

A tiny notebook (written into test-artifacts/, never committed) links an IntSlider to an Image whose
gray level is ``value * 20`` and a ToggleButtons to an HTML label. The test runs it in JupyterLab,
moves the slider and checks the image changed (src and pixels), clicks a toggle and checks the label,
and saves ``test-artifacts/browser_smoke.png``.
"""

from __future__ import annotations

import io
import time

import lab
import nbformat
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

SETUP = """\
import io

import ipywidgets as widgets
from PIL import Image


def gray_png(value):
    buffer = io.BytesIO()
    Image.new("L", (64, 64), color=value * 20).save(buffer, format="PNG")
    return buffer.getvalue()


slider = widgets.IntSlider(value=2, min=0, max=12, description="level")
slider.add_class("ctlib-smoke-slider")
image = widgets.Image(value=gray_png(slider.value), format="png", width=128, height=128)
image.add_class("ctlib-smoke-image")
slider.observe(lambda change: setattr(image, "value", gray_png(change["new"])), names="value")
"""

DISPLAY = """\
toggle = widgets.ToggleButtons(options=["axial", "coronal", "sagittal"], value="axial")
toggle.add_class("ctlib-smoke-toggle")
label = widgets.HTML(f"view: {toggle.value}")
label.add_class("ctlib-smoke-label")
toggle.observe(lambda change: setattr(label, "value", f"view: {change['new']}"), names="value")
widgets.VBox([slider, image, toggle, label])
"""


def _gray_level(png: bytes) -> int:
    with Image.open(io.BytesIO(png)) as picture:
        low, high = picture.convert("L").getextrema()
    assert low == high, "the smoke image should be uniformly gray"
    return low


def _wait_for_gray_level(page, expected: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (level := _gray_level(lab.image_bytes(page, "ctlib-smoke-image"))) != expected:
        assert time.monotonic() < deadline, f"image gray level {level}, expected {expected}"
        time.sleep(0.1)


@pytest.fixture
def smoke_notebook(browser_artifacts_dir) -> str:
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell(DISPLAY)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    path = browser_artifacts_dir / "smoke.ipynb"
    nbformat.write(notebook, path)
    return path.relative_to(lab.REPO_ROOT).as_posix()


def test_widgets_round_trip_in_jupyterlab(browser_page, jupyterlab_url, smoke_notebook):
    page = browser_page
    lab.open_notebook(page, jupyterlab_url, smoke_notebook)
    lab.run_all_cells(page)

    # The slider drives the image through the kernel.
    src = lab.image_src(page, "ctlib-smoke-image")
    assert _gray_level(lab.image_bytes(page, "ctlib-smoke-image")) == 2 * 20
    assert lab.move_slider(page, "ctlib-smoke-slider", 3) == "5"
    new_src = lab.wait_for_image_change(page, "ctlib-smoke-image", src)
    assert new_src != src
    _wait_for_gray_level(page, 5 * 20)  # one update per key press: wait for the last one

    # The toggle drives the label.
    lab.wait_for_text(page, "ctlib-smoke-label", "view: axial")
    lab.select_toggle(page, "ctlib-smoke-toggle", "coronal")
    lab.wait_for_text(page, "ctlib-smoke-label", "view: coronal")

    shot = lab.save_screenshot(page, "browser_smoke.png")
    assert shot.stat().st_size > 0
    lab.close_notebook(page)
