"""Figures of the dose study: colorwash panels with isodose lines, DVH curves, gamma maps, score bars.

Slices are drawn from ``(z, y, x)`` arrays as they are: axial ``[k]`` (rows y, columns x) and coronal
``[:, j, :]`` (rows z, columns x), row 0 at the top, with the physical aspect of the voxels. For OpenKBP
patients (``ctlib.io.openkbp``: y runs posterior, x to the patient's left, z inferior) this is the
radiological convention: anterior up and the head up, the patient's right on the image left.
The colorwash and isodose pixels are the slice viewer's (``ctlib.viz.render``), so a figure and the
viewer show the same dose the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib.cm import ScalarMappable
from matplotlib.lines import Line2D

from ctlib.data.windows import HUWindow
from ctlib.metrics.dose_scores import DVHCurves
from ctlib.viz import labels, panels, render

VIEWS = ("axial", "coronal")
DOSE_CMAP = "turbo"
DIFFERENCE_CMAP = "RdBu_r"
# diverging at gamma = 1; purple-orange stays distinguishable under colour-vision deficiencies
GAMMA_CMAP = "PuOr_r"
LINE_STYLES = ("-", "--", ":", "-.")


def busiest_slice(mask: np.ndarray, axis: int = 0) -> int:
    """Index along ``axis`` of the ``(z, y, x)`` mask's slice with the most voxels
    (the middle when it is empty)."""
    mask = np.asarray(mask, dtype=bool)
    counts = mask.sum(axis=tuple(a for a in range(mask.ndim) if a != axis))
    return int(np.argmax(counts)) if counts.any() else mask.shape[axis] // 2


def _plane(array: np.ndarray, view: str, index: int) -> np.ndarray:
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    return render.raw_plane(array, view, index)


def dose_overlay_rgb(
    ct_slice_hu: np.ndarray,
    dose_slice_gy: np.ndarray,
    *,
    window: HUWindow,
    max_gy: float,
    isodose_levels_gy: Sequence[float] = (),
    alpha: float = 0.35,
    threshold_fraction: float = 0.1,
    cmap: str = DOSE_CMAP,
) -> np.ndarray:
    """``(H, W, 3)`` uint8: the windowed CT with the viewer's dose colorwash (from ``threshold_fraction`` of
    ``max_gy``) and isodose lines at ``isodose_levels_gy``, each in the wash's colour at that dose."""
    if np.shape(ct_slice_hu) != np.shape(dose_slice_gy):
        raise ValueError(f"CT slice {np.shape(ct_slice_hu)} and dose slice {np.shape(dose_slice_gy)} differ")
    rgb = render.gray_to_rgb(render.window_to_uint8(ct_slice_hu, window.low, window.high))
    dose = np.asarray(dose_slice_gy, dtype=np.float32)
    render.dose_colorwash(rgb, dose, max_gy, alpha, threshold_fraction, render.colormap_lut(cmap))
    if len(isodose_levels_gy):
        render.isodose_lines(
            rgb, dose, isodose_levels_gy, render.isodose_colors(isodose_levels_gy, max_gy, cmap)
        )
    return rgb


def _bare(ax: plt.Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def colorwash_panels(
    ct_hu: np.ndarray,
    doses_gy: Mapping[str, np.ndarray],
    spacing_mm: Sequence[float],
    *,
    centre: Sequence[int],
    window: HUWindow,
    isodose_levels_gy: Sequence[float] = (),
    max_gy: float | None = None,
    difference: tuple[str, str] | None = None,
    difference_max_gy: float = 10.0,
    difference_mask: np.ndarray | None = None,
    views: Sequence[str] = VIEWS,
    panel_size_in: float = 2.6,
) -> plt.Figure:
    """One column per dose (colorwash and isodose lines over the CT) and, with ``difference=(a, b)``, a last
    column ``a - b`` in Gy (diverging, within ``difference_mask``); one row per view through ``centre`` (z, y,
    x)."""
    if not doses_gy:
        raise ValueError("colorwash_panels needs at least one dose")
    shapes = {name: np.shape(d) for name, d in doses_gy.items()}
    if any(s != np.shape(ct_hu) for s in shapes.values()):
        raise ValueError(f"every dose must have the CT's shape {np.shape(ct_hu)}, got {shapes}")
    if difference is not None and not set(difference) <= set(doses_gy):
        raise ValueError(f"difference {difference} names doses not among {list(doses_gy)}")
    max_gy = float(max_gy or max(float(np.max(d)) for d in doses_gy.values()))
    n_cols = len(doses_gy) + (difference is not None)
    fig, axes = plt.subplots(
        len(views),
        n_cols,
        figsize=(panel_size_in * n_cols + 1.6, panel_size_in * len(views)),
        squeeze=False,
        layout="constrained",
    )
    diff_handle = None
    for r, view in enumerate(views):
        index = int(centre[0] if view == "axial" else centre[1])
        ct_plane = _plane(ct_hu, view, index)
        for c, dose in enumerate(doses_gy.values()):
            rgb = dose_overlay_rgb(ct_plane, _plane(dose, view, index), window=window, max_gy=max_gy,
                                   isodose_levels_gy=isodose_levels_gy)
            panels.show_plane(axes[r, c], rgb, view, spacing_mm)
        if difference is not None:
            ax = axes[r, -1]
            panels.show_plane(ax, ct_plane, view, spacing_mm, cmap="gray", vmin=window.low, vmax=window.high)
            diff = _plane(doses_gy[difference[0]], view, index) - _plane(doses_gy[difference[1]], view, index)
            shown = (
                diff
                if difference_mask is None
                else np.ma.masked_where(~_plane(difference_mask, view, index), diff)
            )
            diff_handle = panels.show_plane(ax, shown, view, spacing_mm, cmap=DIFFERENCE_CMAP,
                                            vmin=-difference_max_gy, vmax=difference_max_gy, alpha=0.85)
        for c in range(n_cols):
            _bare(axes[r, c])
        axes[r, 0].set_ylabel(f"{view} {index}", fontsize=12)
    for c, name in enumerate(doses_gy):
        axes[0, c].set_title(name, fontsize=12)
    if difference is not None:
        axes[0, -1].set_title(f"{difference[0]} - {difference[1]}", fontsize=12)
        fig.colorbar(diff_handle, ax=axes[:, -1].tolist(), shrink=0.8, label="Gy")
    wash = ScalarMappable(mcolors.Normalize(0.0, max_gy), DOSE_CMAP)
    bar = fig.colorbar(wash, ax=axes[:, : len(doses_gy)].ravel().tolist(), shrink=0.8, label="dose (Gy)")
    for level in isodose_levels_gy:
        bar.ax.axhline(level, color="black", linewidth=1.0)
    return fig


def structure_colors(names: Sequence[str]) -> dict[str, str]:
    """A deterministic colour per structure name (the label palette of ``ctlib.viz.labels``, in order)."""
    table = labels.label_colors(len(names))
    return {name: labels.rgb_to_hex(table[i + 1]) for i, name in enumerate(names)}


def dvh_plot(
    curves: Mapping[str, DVHCurves],
    *,
    structures: Sequence[str] | None = None,
    ax: plt.Axes | None = None,
    title: str | None = None,
) -> plt.Figure:
    """Cumulative DVHs: one colour per structure, one line style per dose (the first, e.g. the plan, solid).

    ``structures`` (default: every structure of the first dose, in its order) are drawn where a dose has them.
    """
    if not curves:
        raise ValueError("dvh_plot needs at least one set of curves")
    if len(curves) > len(LINE_STYLES):
        raise ValueError(f"dvh_plot draws at most {len(LINE_STYLES)} doses, got {len(curves)}")
    first = next(iter(curves.values()))
    names = list(structures) if structures is not None else list(first.volume_percent)
    colours = structure_colors(names)
    fig = ax.figure if ax is not None else plt.figure(figsize=(7.5, 4.8), layout="constrained")
    ax = ax if ax is not None else fig.add_subplot()
    for style, dvh in zip(LINE_STYLES, curves.values(), strict=False):
        for name in names:
            if name in dvh.volume_percent:
                ax.plot(dvh.dose_gy, dvh.volume_percent[name], style, color=colours[name], linewidth=1.5)
    drawn = [n for n in names if any(n in dvh.volume_percent for dvh in curves.values())]
    handles = [Line2D([], [], color=colours[n], label=n) for n in drawn]
    handles += [Line2D([], [], color="black", linestyle=s, label=label)
                for s, label in zip(LINE_STYLES, curves, strict=False)]
    ax.legend(handles=handles, fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set(xlabel="dose (Gy)", ylabel="volume (%)", ylim=(0, 101), xlim=(0, float(first.dose_gy[-1])))
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=12)
    return fig


def gamma_panels(
    ct_hu: np.ndarray,
    gamma_maps: Mapping[str, np.ndarray],
    spacing_mm: Sequence[float],
    *,
    centre: Sequence[int],
    window: HUWindow,
    pass_rates_percent: Mapping[str, float] | None = None,
    max_gamma: float = 2.0,
    views: Sequence[str] = VIEWS,
    panel_size_in: float = 2.6,
) -> plt.Figure:
    """Gamma maps over the CT, one column per map, one row per view through ``centre``; diverging at gamma = 1
    (purple passes, orange fails); voxels not evaluated (NaN, below the low-dose cutoff) show the CT only."""
    if not gamma_maps:
        raise ValueError("gamma_panels needs at least one gamma map")
    fig, axes = plt.subplots(len(views), len(gamma_maps), squeeze=False, layout="constrained",
                             figsize=(panel_size_in * len(gamma_maps) + 1.4, panel_size_in * len(views)))
    norm = mcolors.TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=max_gamma)
    handle = None
    for r, view in enumerate(views):
        index = int(centre[0] if view == "axial" else centre[1])
        for c, (name, gamma_map) in enumerate(gamma_maps.items()):
            if np.shape(gamma_map) != np.shape(ct_hu):
                raise ValueError(
                    f"gamma map {name!r} has shape {np.shape(gamma_map)}, expected {np.shape(ct_hu)}"
                )
            ax = axes[r, c]
            panels.show_plane(ax, _plane(ct_hu, view, index), view, spacing_mm, cmap="gray", vmin=window.low,
                              vmax=window.high)
            plane = _plane(gamma_map, view, index)
            handle = panels.show_plane(
                ax, np.ma.masked_invalid(plane), view, spacing_mm, cmap=GAMMA_CMAP, norm=norm
            )
            _bare(ax)
            if r == 0:
                rate = (pass_rates_percent or {}).get(name)
                ax.set_title(name if rate is None else f"{name}\n{rate:.1f} % pass", fontsize=12)
            if c == 0:
                ax.set_ylabel(f"{view} {index}", fontsize=12)
    fig.colorbar(handle, ax=axes.ravel().tolist(), shrink=0.8, label="gamma (3 %/3 mm)")
    return fig


def score_bars(table: pd.DataFrame, *, columns: Sequence[tuple[str, str]] = (
        ("dose_score_gy", "dose score (Gy)"), ("dvh_score_gy", "DVH score (Gy)"))) -> plt.Figure:
    """One bar panel per score column; rows whose ``source`` is not ``"this study"`` (the published anchors)
    are drawn as dashed horizontal lines instead of bars, so ours and theirs are not mistaken for each
    other."""
    missing = {"source", *(c for c, _ in columns)} - set(table.columns)
    if missing:
        raise ValueError(f"score_bars: table lacks columns {sorted(missing)}")
    ours, anchors = table[table["source"] == "this study"], table[table["source"] != "this study"]
    fig, axes = plt.subplots(
        1, len(columns), figsize=(4.2 * len(columns), 3.8), squeeze=False, layout="constrained"
    )
    for ax, (column, label) in zip(axes[0], columns, strict=True):
        ax.bar(range(len(ours)), ours[column], color="C0")
        ax.set_xticks(range(len(ours)), [str(i) for i in ours.index], rotation=30, ha="right")
        for i, (name, row) in enumerate(anchors.iterrows()):
            ax.axhline(
                row[column], color=f"C{i + 1}", linestyle="--", label=f"{name} ({int(row['patients'])} pts)"
            )
        ax.set_ylabel(label)
        if len(anchors):
            ax.legend(fontsize=9)
    return fig
