"""The ipywidgets of the slice viewer (``ctlib.viz.viewer``): sliders, window presets, overlay
controls, legends and the position readout, with ipyevents clicks and wheel steps on the panes.

CSS classes (for browser tests): ``ctlib-viewer`` (root); ``ctlib-viewer-image`` with
``ctlib-viewer-{axial,coronal,sagittal}-image`` and ``ctlib-viewer-volume-{row}``;
``ctlib-viewer-{axial,coronal,sagittal}-slider``; ``ctlib-viewer-window`` (presets),
``ctlib-viewer-level``, ``ctlib-viewer-width``; ``ctlib-viewer-crosshair-toggle``;
``ctlib-viewer-labels-toggle``, ``ctlib-viewer-label-outline``, ``ctlib-viewer-label-opacity``,
``ctlib-viewer-legend`` (rows ``ctlib-viewer-legend-item`` with ``data-label``);
``ctlib-viewer-dose-toggle``, ``ctlib-viewer-isodose-toggle``, ``ctlib-viewer-dose-opacity``,
``ctlib-viewer-isodose-levels``, ``ctlib-viewer-dose-legend``; ``ctlib-viewer-position`` (readout).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np

from ctlib.data import windows as hu_windows
from ctlib.viz import labels as label_tables
from ctlib.viz import view_state

if TYPE_CHECKING:
    from ctlib.viz.viewer import Viewer

PRESETS = (("lung", "lung"), ("mediastinum", "mediastinum"), ("soft tissue", "soft_tissue"),
           ("bone", "bone"), ("brain", "brain"), ("full", "full"))


def readout_html(state: view_state.ViewerState) -> str:
    """Position in LPS mm and, per volume, voxel index, HU, labels and dose at the crosshair."""
    x, y, z = state.position_mm
    lines = [f"<b>LPS</b> x {x:.1f}, y {y:.1f}, z {z:.1f} mm"]
    for row in view_state.probe(state):
        text = f"<b>{html.escape(row['volume'])}</b> [{', '.join(map(str, row['index_kji']))}]"
        text += f" {row['hu']:.0f} HU" if row["hu"] is not None else " outside"
        if row.get("labels"):
            text += " &middot; " + html.escape(", ".join(row["labels"]))
        if row.get("dose_gy") is not None:
            text += f" &middot; {row['dose_gy']:.1f} Gy"
        lines.append(text)
    return '<div style="font-size:12px;line-height:1.35">' + "<br>".join(lines) + "</div>"


def _css(widget: Any, *classes: str) -> Any:
    for name in classes:
        widget.add_class(name)
    return widget


class Controls:
    """The ipywidgets of one Viewer; every change goes state -> ``viewer.refresh()`` -> widgets."""

    def __init__(self, viewer: Viewer, pane_px: int) -> None:
        import ipywidgets as w

        self.viewer, state = viewer, viewer.state
        self._syncing = False
        # Sliders step through the finest grid along each axis; positions stay physical (mm).
        self.slider_ref = [int(np.argmin([dv.volume.spacing[a] for dv in state.volumes])) for a in range(3)]
        self.sliders = {}
        for a, axis in enumerate(view_state.AXES):
            n = state.volumes[self.slider_ref[a]].volume.shape[a]
            slider = w.IntSlider(0, 0, n - 1, description=axis, continuous_update=True,
                                 layout=w.Layout(width="300px"))
            slider.observe(lambda change, a=a: self._on_slider(a, change["new"]), "value")
            self.sliders[axis] = _css(slider, "ctlib-viewer-slider", f"ctlib-viewer-{axis}-slider")
        preset = state.window.name if state.window.name in hu_windows.WINDOWS else None
        self.window = _css(w.ToggleButtons(options=PRESETS, value=preset, description="window",
                                           style={"button_width": "auto"}), "ctlib-viewer-window")
        self.level = _css(w.IntSlider(round(state.window.level), -1100, 3100, description="level (HU)",
                                      continuous_update=True), "ctlib-viewer-level")
        self.width = _css(w.IntSlider(round(state.window.width), 1, 4500, description="width (HU)",
                                      continuous_update=True), "ctlib-viewer-width")
        self.window.observe(self._on_preset, "value")
        self.level.observe(self._on_level_width, "value")
        self.width.observe(self._on_level_width, "value")
        self.crosshair = _css(w.Checkbox(state.show_crosshair, description="crosshair", indent=False),
                              "ctlib-viewer-crosshair-toggle")
        self.show_labels = _css(w.Checkbox(state.show_labels, description="labels", indent=False),
                                "ctlib-viewer-labels-toggle")
        self.label_opacity = _css(w.FloatSlider(state.label_opacity, min=0, max=1, step=0.05,
                                                description="opacity"), "ctlib-viewer-label-opacity")
        self.label_outline = _css(w.Checkbox(state.label_outline, description="outlines only", indent=False),
                                  "ctlib-viewer-label-outline")
        self.show_dose = _css(w.Checkbox(state.show_dose, description="dose wash", indent=False),
                              "ctlib-viewer-dose-toggle")
        self.show_isodose = _css(w.Checkbox(state.show_isodose, description="isodose lines", indent=False),
                                 "ctlib-viewer-isodose-toggle")
        self.dose_opacity = _css(
            w.FloatSlider(
                state.dose_opacity,
                min=0,
                max=1,
                step=0.05,
                description="wash opacity",
                style={"description_width": "initial"},
            ),
            "ctlib-viewer-dose-opacity",
        )
        self.isodose_levels = _css(w.Text(", ".join(f"{v:g}" for v in state.isodose_levels_gy),
                                          description="levels (Gy)", continuous_update=False,
                                          style={"description_width": "initial"}),
                                   "ctlib-viewer-isodose-levels")
        for box, attr in ((self.crosshair, "show_crosshair"), (self.show_labels, "show_labels"),
                          (self.label_opacity, "label_opacity"), (self.label_outline, "label_outline"),
                          (self.show_dose, "show_dose"),
                          (self.show_isodose, "show_isodose"), (self.dose_opacity, "dose_opacity")):
            box.observe(lambda change, attr=attr: self._set(attr, change["new"]), "value")
        self.isodose_levels.observe(self._on_levels, "value")
        self.legend = _css(w.HTML(), "ctlib-viewer-legend")
        self.dose_legend = _css(w.HTML(), "ctlib-viewer-dose-legend")
        self.readout = _css(w.HTML(), "ctlib-viewer-position")
        self.images: list[dict[str, Any]] = []
        self.events: list[Any] = []
        grid_rows = []
        widest_mm = max(dv.layout("axial").shape[1] * dv.layout("axial").pixel_mm for dv in state.volumes)
        for v, dv in enumerate(state.volumes):
            row = {}
            for axis in view_state.AXES:
                layout = dv.layout(axis)
                width_px = round(layout.shape[1] * layout.pixel_mm / widest_mm * pane_px)
                image = _css(w.Image(format=viewer.image_format, width=str(width_px),
                                     layout=w.Layout(flex="0 0 auto", margin="1px")),
                             "ctlib-viewer-image", f"ctlib-viewer-{axis}-image", f"ctlib-viewer-volume-{v}")
                if width_px > layout.shape[1]:  # shown larger than rendered: keep voxels sharp
                    image.add_class("ctlib-viewer-upscaled")
                self._watch(image, axis, v)
                row[axis] = image
            self.images.append(row)
            name = w.HTML(
                '<div style="writing-mode:vertical-rl;transform:rotate(180deg)">'
                f"{html.escape(dv.name)}</div>",
                layout=w.Layout(width="22px"),
            )
            grid_rows.append(w.HBox([name, *row.values()], layout=w.Layout(align_items="flex-start")))
        overlay_box = []
        if state.labels is not None:
            overlay_box += [w.HBox([self.show_labels, self.label_outline]), self.label_opacity, self.legend]
        if state.dose_gy is not None:
            overlay_box += [
                self.show_dose,
                self.show_isodose,
                self.dose_opacity,
                self.isodose_levels,
                self.dose_legend,
            ]
        self.side = side = w.VBox(
            [self.crosshair, *overlay_box, self.readout], layout=w.Layout(width="300px")
        )
        top = w.VBox([self.window, w.HBox([self.level, self.width]), w.HBox(list(self.sliders.values()))])
        css = w.HTML("<style>.ctlib-viewer-upscaled{image-rendering:pixelated}</style>")
        body = w.HBox([w.VBox(grid_rows), side], layout=w.Layout(flex_flow="row wrap"))
        self.root = _css(w.VBox([css, top, body]), "ctlib-viewer")

    def _watch(self, image: Any, axis: str, volume: int) -> None:
        try:
            import ipyevents
        except ImportError:  # still usable through the sliders
            return
        event = ipyevents.Event(source=image, watched_events=["click", "wheel"], prevent_default_action=True)
        event.on_dom_event(lambda e, axis=axis, volume=volume: self.on_event(axis, volume, e))
        self.events.append(event)

    def on_event(self, axis: str, volume: int, event: dict[str, Any]) -> None:
        """A click moves the crosshair there; the wheel steps through slices of that pane."""
        if event.get("type") == "wheel":
            slider = self.sliders[axis]
            slider.value = int(
                np.clip(slider.value + np.sign(event.get("deltaY", 0)), slider.min, slider.max)
            )
        elif event.get("type") == "click":
            self.viewer.click(axis, volume, event)

    def _set(self, attr: str, value: Any) -> None:
        if not self._syncing:
            setattr(self.viewer.state, attr, value)
            self.viewer.refresh()

    def _on_slider(self, a: int, value: int) -> None:
        if self._syncing:
            return
        ref = self.viewer.state.volumes[self.slider_ref[a]]
        kji = ref.index_float(self.viewer.state.position_mm)
        kji[a] = value
        self.viewer.set_position(ref.position_of(kji))

    def _on_preset(self, change: dict[str, Any]) -> None:
        if not self._syncing and change["new"] is not None:
            self.viewer.set_window(change["new"])

    def _on_level_width(self, _change: dict[str, Any]) -> None:
        if not self._syncing:
            self.viewer.set_window((self.level.value, self.width.value))

    def _on_levels(self, change: dict[str, Any]) -> None:
        try:
            levels = tuple(sorted(float(t) for t in change["new"].replace(";", ",").split(",") if t.strip()))
        except ValueError:
            return  # keep the last valid levels while the user types
        self._set("isodose_levels_gy", levels)

    def sync_from_state(self) -> None:
        """Put the state back into the controls without triggering their callbacks."""
        state = self.viewer.state
        self._syncing = True
        try:
            for a, axis in enumerate(view_state.AXES):
                ref = state.volumes[self.slider_ref[a]]
                self.sliders[axis].value = int(ref.index_of(state.position_mm)[0][a])
            window = state.window
            preset = next((k for k, v in hu_windows.WINDOWS.items()
                           if (v.level, v.width) == (window.level, window.width)), None)
            self.window.value = preset if preset in dict(PRESETS).values() else None
            self.level.value, self.width.value = round(window.level), round(window.width)
        finally:
            self._syncing = False
        self.legend.value, self.dose_legend.value = label_tables.state_legend_html(state)
        self.readout.value = readout_html(state)
