"""Orthogonal slice viewer for Jupyter (ipywidgets + ipyevents), with a static matplotlib fallback.

    from ctlib.viz import viewer
    viewer.Viewer(path_or_volume)                                   # one volume
    viewer.Viewer({"thick": t, "prediction": p, "truth": g})        # compare grid, one row each
    viewer.Viewer(ct, labels="mask.nii.gz", label_names="structures.csv", window="lung")
    viewer.Viewer("openkbp/train/pt_1.npz")                         # CT + structures + dose
    viewer.Viewer.from_run(run_id, volume_id)                       # a preprocessing cache volume

All rows share one position in patient space (LPS mm) and one HU window, so volumes of different
spacing or extent stay in sync by physical position, not by index (``ctlib.viz.view_state``). Panes
are rendered in numpy (``ctlib.viz.render``) and sent as JPEG (default) or PNG bytes to the widgets of
``ctlib.viz.viewer_widgets`` (which lists their CSS classes); ``to_figure`` draws the same pixels with
matplotlib for nbval and PDFs.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ctlib.data import windows as hu_windows
from ctlib.io import openkbp, reader
from ctlib.io.orientation import reorient_to_lps
from ctlib.io.volume import Volume
from ctlib.viz import labels as label_tables
from ctlib.viz import render, view_state, viewer_widgets

WindowSpec = str | hu_windows.HUWindow | tuple[float, float]
RUN_PREFIX = "run:"


@dataclass(frozen=True)
class RunOutput:
    """A volume in a run's preprocessing cache: ``runs/<run_id>/cache/volumes/<volume_id>.npz``."""

    run_id: str
    volume_id: str


VolumeInput = Volume | str | os.PathLike | RunOutput


def run_volume(run_id: str, volume_id: str, *, require_completed: bool = False) -> Volume:
    """Read ``<run dir>/cache/volumes/<volume_id>.npz`` of a run (found through ``ctlib.runs``)."""
    from ctlib import runs
    from ctlib.data import cache

    folder = runs.run_dir_of(run_id, require_completed=require_completed) / "cache" / "volumes"
    path = folder / f"{volume_id}.npz"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.npz"))[:10]
        raise FileNotFoundError(
            f"run {run_id!r} has no cached volume {volume_id!r} ({path}); cached: {known or 'none'}"
        )
    return cache.load_volume(path)


def _parse_window(spec: WindowSpec) -> hu_windows.HUWindow:
    """A named window, an ``HUWindow``, or a ``(level, width)`` pair in HU."""
    if isinstance(spec, tuple):
        return hu_windows.HUWindow("custom", float(spec[0]), float(spec[1]))
    return hu_windows.get_window(spec)


def _name_of(item: VolumeInput) -> str:
    if isinstance(item, RunOutput):
        return item.volume_id
    if isinstance(item, Volume):
        return Path(str(item.meta.get("source", "volume"))).name.split(".")[0] or "volume"
    text = os.fspath(item)
    return text.rsplit("/", 1)[-1] if text.startswith(RUN_PREFIX) else Path(text).name.split(".")[0]


def load_input(item: VolumeInput) -> tuple[Volume, dict[str, np.ndarray] | None, np.ndarray | None]:
    """``(volume, structures or None, dose_gy or None)`` from a Volume, a path (DICOM folder, NIfTI,
    OpenKBP ``.npz`` or folder), a ``RunOutput`` or a ``"run:<run_id>/<volume_id>"`` string."""
    if isinstance(item, Volume):
        return item, None, None
    if isinstance(item, RunOutput):
        return run_volume(item.run_id, item.volume_id), None, None
    text = os.fspath(item)
    if text.startswith(RUN_PREFIX):
        run_id, _, volume_id = text[len(RUN_PREFIX):].partition("/")
        if not volume_id:
            raise ValueError(f"expected 'run:<run_id>/<volume_id>', got {text!r}")
        return run_volume(run_id, volume_id), None, None
    if reader.detect_format(text) == "openkbp":
        patient = openkbp.read_openkbp(text)
        return patient.ct, patient.structures or None, patient.dose_gy
    return reader.read_volume(text), None, None


def _label_set(labels: Any, label_names: Any, like: Volume) -> label_tables.LabelSet:
    if isinstance(label_names, (str, os.PathLike)):
        label_names = label_tables.chest_ct_label_names(label_names)
    if isinstance(labels, label_tables.LabelSet):
        return labels
    if isinstance(labels, (str, os.PathLike)):
        from ctlib.io import nifti

        labels = nifti.read_nifti_labels(labels, like=like)
    if isinstance(labels, Mapping):
        return label_tables.LabelSet.from_masks(labels)
    return label_tables.LabelSet.from_label_map(np.asarray(labels), label_names)


def default_isodose_levels(max_gy: float) -> tuple[float, ...]:
    """30, 50, 70, 90 and 95 % of the maximum dose, rounded to 0.1 Gy."""
    return tuple(round(f * max_gy, 1) for f in (0.3, 0.5, 0.7, 0.9, 0.95))


def _same_grid(a: Volume, b: Volume) -> bool:
    return (
        a.shape == b.shape
        and np.allclose(a.spacing, b.spacing, atol=1e-4)
        and np.allclose(a.origin, b.origin, atol=1e-3)
        and np.allclose(a.direction, b.direction, atol=1e-4)
    )


def build_state(
    volumes: VolumeInput | Mapping[str, VolumeInput],
    labels: Any = None,
    label_names: Mapping[int, str] | str | os.PathLike | None = None,
    dose_gy: np.ndarray | None = None,
    window: WindowSpec = "mediastinum",
    *,
    overlay_on: str | None = None,
    windows: Mapping[str, WindowSpec] | None = None,
    isodose_levels_gy: tuple[float, ...] | None = None,
    dose_max_gy: float | None = None,
    label_opacity: float = 0.4,
    crosshair_gap: float = 0.012,
) -> view_state.ViewerState:
    """Load, reorient (LPS, radiological display) and wire the overlays of the viewer's volumes.

    Labels (a ``(z, y, x)`` id map, ``{name: bool mask}``, a NIfTI label-map path or a ``LabelSet``) and
    dose are on the grid of ``overlay_on`` (default: the first volume of that shape, or the OpenKBP
    patient they came with); other volumes with the same direction show them resampled by position.
    """
    items = dict(volumes) if isinstance(volumes, Mapping) else {_name_of(volumes): volumes}
    if not items:
        raise ValueError("the viewer needs at least one volume")
    loaded = {name: load_input(item) for name, item in items.items()}
    for name, (_, structures, dose) in loaded.items():  # an OpenKBP patient brings its own overlays
        if (structures or dose is not None) and overlay_on in (None, name):
            if labels is None and structures:
                labels, overlay_on = structures, name
            if dose_gy is None and dose is not None:
                dose_gy, overlay_on = dose, name
            break
    overlay_shape = None
    if labels is not None and not isinstance(labels, (str, os.PathLike)):
        overlay_shape = (
            labels.array
            if isinstance(labels, label_tables.LabelSet)
            else next(iter(labels.values()))
            if isinstance(labels, Mapping)
            else np.asarray(labels)
        ).shape
    overlay_shape = overlay_shape or (np.shape(dose_gy) if dose_gy is not None else None)
    if overlay_on is None and (labels is not None or dose_gy is not None):
        matches = [n for n, (v, _, _) in loaded.items() if overlay_shape in (None, v.shape)]
        if not matches:
            raise ValueError(f"overlay shape {overlay_shape} matches no volume: "
                             f"{ {n: v.shape for n, (v, _, _) in loaded.items()} }; pass overlay_on=")
        overlay_on = matches[0]
    if overlay_on is not None and overlay_on not in loaded:
        raise ValueError(f"overlay_on={overlay_on!r} is not one of the volumes {list(loaded)}")
    ref = loaded[overlay_on][0] if overlay_on else None
    label_set = None
    if labels is not None:
        label_set = _label_set(labels, label_names, ref)
        if label_set.array.shape != ref.shape:
            raise ValueError(
                f"labels have shape {label_set.array.shape}, volume {overlay_on!r} has {ref.shape}"
            )
        label_set = dataclasses.replace(label_set, array=view_state.reorient_array_like(label_set.array, ref))
    if dose_gy is not None:
        dose_gy = np.asarray(dose_gy, dtype=np.float32)
        if dose_gy.shape != ref.shape:
            raise ValueError(f"dose has shape {dose_gy.shape}, volume {overlay_on!r} has {ref.shape}")
        dose_gy = view_state.reorient_array_like(dose_gy, ref)
    ref_lps = reorient_to_lps(ref) if ref is not None else None
    fixed = {name: _parse_window(w) for name, w in (windows or {}).items()}
    display = []
    for name, (volume, _, _) in loaded.items():
        volume = reorient_to_lps(volume)
        dv = view_state.DisplayVolume(name, volume, window=fixed.get(name))
        if ref_lps is not None:
            if _same_grid(volume, ref_lps):
                dv.overlay_shape = ref_lps.shape
            elif np.allclose(volume.direction, ref_lps.direction, atol=1e-3):
                dv.overlay_maps, dv.overlay_shape = view_state.grid_index_maps(volume, ref_lps), ref_lps.shape
        display.append(dv)
    max_gy = float(dose_max_gy or (dose_gy.max() if dose_gy is not None and dose_gy.max() > 0 else 1.0))
    return view_state.ViewerState(
        volumes=display, position_mm=display[0].centre_mm(), window=_parse_window(window),
        labels=label_set, dose_gy=dose_gy, label_opacity=label_opacity, dose_max_gy=max_gy,
        isodose_levels_gy=tuple(isodose_levels_gy if isodose_levels_gy is not None else
                                default_isodose_levels(max_gy) if dose_gy is not None else ()),
        crosshair_gap=crosshair_gap,
    )


def encode_rgb(image: np.ndarray, fmt: Literal["jpeg", "png"] = "jpeg", *, quality: int = 90,
               compress_level: int = 1, subsampling: int = 0) -> bytes:
    """JPEG or PNG bytes of an ``(H, W, 3)`` or ``(H, W, 4)`` uint8 image (alpha dropped).

    JPEG defaults to 4:4:4 chroma (``subsampling=0``) so 1-pixel coloured lines keep their colour;
    RGBA input is faster than RGB (PIL's native pixel layout, no repacking).
    """
    from PIL import Image

    if fmt not in ("jpeg", "png"):
        raise ValueError(f"image format must be 'jpeg' or 'png', got {fmt!r}")
    picture = Image.fromarray(np.ascontiguousarray(image))
    picture = picture.convert("RGB") if picture.mode != "RGB" else picture
    buffer = io.BytesIO()
    if fmt == "jpeg":
        picture.save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    else:
        picture.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def static_panes(
    source: view_state.ViewerState | VolumeInput | Mapping[str, VolumeInput], *, panel_in: float = 2.6,
    title: str | None = None, legend_loc: Literal["right", "below"] = "right", **build_kwargs: Any,
) -> Any:
    """The viewer's panes (same ``render`` functions) as a matplotlib figure: one row per volume,
    axial / coronal / sagittal, with the label and isodose legends; styled by ``ctlib.viz.style``.

    ``legend_loc="below"`` spreads a long legend (dozens of organs) in columns under the panes."""
    import matplotlib as mpl
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from ctlib.viz import style

    if legend_loc not in ("right", "below"):
        raise ValueError(f"legend_loc must be 'right' or 'below', got {legend_loc!r}")
    state = source if isinstance(source, view_state.ViewerState) else build_state(source, **build_kwargs)
    n = len(state.volumes)
    # Widths and heights in mm, so every pane of every row is drawn at one physical scale.
    extents = [
        [np.multiply(dv.layout(a).shape, dv.layout(a).pixel_mm) for a in view_state.AXES]
        for dv in state.volumes
    ]
    col_mm = [max(e[c][1] for e in extents) for c in range(3)]
    row_mm = [max(h for h, _ in e) for e in extents]
    scale = panel_in / col_mm[0]
    entries = label_tables.legend_entries(state) + (
        label_tables.dose_legend_entries(state) if state.show_isodose else []
    )
    panes_in = (sum(col_mm) * scale + 0.6, sum(row_mm) * scale + 0.6 * n + 0.4)
    row_in, column_in = 0.24, 0.105 * max((len(e.name) for e in entries), default=0) + 0.7  # at 12 pt
    if legend_loc == "right":
        ncols = int(np.ceil(len(entries) / max(int(panes_in[1] / row_in), 8)))
        figsize = (panes_in[0] + ncols * column_in, panes_in[1])
    else:
        ncols = max(1, min(len(entries), int(panes_in[0] / column_in)))
        figsize = (panes_in[0], panes_in[1] + np.ceil(len(entries) / ncols) * row_in + 0.2)
    with mpl.rc_context(style.RC_PARAMS):
        fig, axes = plt.subplots(n, 3, squeeze=False, layout="constrained", figsize=figsize,
                                 gridspec_kw={"width_ratios": col_mm, "height_ratios": row_mm})
        # The first figure of a Jupyter kernel loads the inline backend here, which turns interactive
        # mode on; the context would undo that on exit and later figures would never be shown.
        interactive = mpl.is_interactive()
        for r, dv in enumerate(state.volumes):
            for c, axis in enumerate(view_state.AXES):
                ax = axes[r, c]
                ax.imshow(render.render_pane(state, axis, r), interpolation="antialiased")
                ax.set_xticks([])
                ax.set_yticks([])
                index = view_state.slice_index(state, axis, r)
                ax.set_title(f"{axis} {'outside' if index is None else index}", fontsize=12)
            axes[r, 0].set_ylabel(dv.name)
        handles = [
            Patch(facecolor=e.color, edgecolor="0.3", label=e.name)
            for e in label_tables.legend_entries(state)
        ]
        handles += [Line2D([], [], color=e.color, lw=2, label=e.name) for e in entries[len(handles):]]
        if handles:
            fig.legend(
                handles=handles,
                loc="outside right upper" if legend_loc == "right" else "outside lower center",
                fontsize=12,
                frameon=False,
                ncols=ncols,
            )
        if title:
            fig.suptitle(title)
    mpl.interactive(interactive)
    return fig


class Viewer:
    """Three orthogonal panes per volume, shared position and window, label and dose overlays."""

    def __init__(
        self,
        volumes: VolumeInput | Mapping[str, VolumeInput],
        labels: Any = None,
        label_names: Mapping[int, str] | str | os.PathLike | None = None,
        dose_gy: np.ndarray | None = None,
        window: WindowSpec = "mediastinum",
        *,
        image_format: Literal["jpeg", "png"] = "jpeg",
        jpeg_quality: int = 90,
        jpeg_subsampling: int = 0,
        png_compress_level: int = 1,
        pane_px: int = 360,
        **build_kwargs: Any,
    ) -> None:
        """``pane_px``: on-screen width of the widest axial pane (all panes share its mm per pixel);
        other keywords go to ``build_state`` (``overlay_on``, ``windows``, ``isodose_levels_gy``, ...)."""
        self.state = build_state(volumes, labels, label_names, dose_gy, window, **build_kwargs)
        self.image_format, self.jpeg_quality, self.png_compress_level = (
            image_format,
            jpeg_quality,
            png_compress_level,
        )
        self.jpeg_subsampling = jpeg_subsampling
        self._frame_keys: dict[tuple[int, str], tuple] = {}
        self.controls = viewer_widgets.Controls(self, pane_px)
        self.widget = self.controls.root
        self.refresh()

    @classmethod
    def from_run(cls, run_id: str, volume_id: str, **kwargs: Any) -> Viewer:
        """The viewer on a volume of a run's preprocessing cache
        (``runs/<id>/cache/volumes/<volume_id>.npz``)."""
        return cls({volume_id: RunOutput(run_id, volume_id)}, **kwargs)

    def __repr__(self) -> str:
        rows = ", ".join(f"{dv.name} {dv.volume.shape}" for dv in self.state.volumes)
        return f"Viewer({rows})"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget, with a text fallback free of model ids (so nbval compares it run to run)."""
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)
        return bundle

    def encode(self, rgba: np.ndarray) -> bytes:
        return encode_rgb(rgba, self.image_format, quality=self.jpeg_quality,
                          compress_level=self.png_compress_level, subsampling=self.jpeg_subsampling)

    def refresh(self) -> None:
        """Re-render the panes whose pixels changed, then the legends and the readout."""
        state = self.state
        for v in range(len(state.volumes)):
            for axis in view_state.AXES:
                base = render.render_base(state, axis, v)
                cross = view_state.crosshair_pixel(state, axis, v) if state.show_crosshair else None
                key = (base.key, cross, state.crosshair_color, state.crosshair_gap)
                if self._frame_keys.get((v, axis)) == key:
                    continue
                self.controls.images[v][axis].value = self.encode(render.render_pane_rgba(state, axis, v))
                self._frame_keys[(v, axis)] = key
        self.controls.sync_from_state()

    def set_position(self, position_mm: np.ndarray | tuple[float, float, float]) -> None:
        """Move the crosshair to an LPS position (mm) in every row."""
        self.state.position_mm = np.asarray(position_mm, dtype=np.float64)
        self.refresh()

    def set_window(self, window: WindowSpec) -> None:
        """Switch to a named preset, an ``HUWindow`` or a ``(level, width)`` pair."""
        self.state.window = _parse_window(window)
        self.refresh()

    def click(self, axis: str, volume: int, event: Mapping[str, Any]) -> None:
        """Handle an ipyevents click on a pane: move the position to the voxel under the pointer."""
        shape = self.state.volumes[volume].layout(axis).shape
        if event.get("boundingRectWidth"):
            fx = float(event["relativeX"]) / float(event["boundingRectWidth"])
            fy = float(event["relativeY"]) / float(event["boundingRectHeight"])
        else:  # older front-ends: position in image pixels
            fx, fy = (float(event["dataX"]) + 0.5) / shape[1], (float(event["dataY"]) + 0.5) / shape[0]
        self.set_position(view_state.position_from_click(self.state, axis, volume, fx, fy))

    def legend(self) -> list[label_tables.LegendEntry]:
        """Labels visible in the current panes (name and colour)."""
        return label_tables.legend_entries(self.state)

    def to_figure(self, **kwargs: Any) -> Any:
        """The current panes as a matplotlib figure (for nbval, PDFs and ``style.save_figure``)."""
        return static_panes(self.state, **kwargs)
