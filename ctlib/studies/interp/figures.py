"""Figures of slice interpolation: method panels with reformats and zooms, the sampling ablation's curves,
uncertainty calibration, and metric tables rendered as figures.

Volumes are shown in the radiological convention (reoriented to LPS: anterior up, the patient's right on
the image's left, head up in reformats) with the physical aspect ratio of their voxels, so a thick input
looks thick in the coronal and sagittal reformats, where z-interpolation shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from ctlib.data.windows import HUWindow
from ctlib.io.orientation import reorient_to_lps
from ctlib.io.volume import Volume
from ctlib.viz import panels

View = Literal["axial", "coronal", "sagittal"]
VIEWS: tuple[str, ...] = get_args(View)
MAP_CMAP = "magma"  # perceptually uniform, readable in greyscale print
GAUSSIAN_ABS_RATIO = float(np.sqrt(2.0 / np.pi))  # E|e| / sigma for e ~ N(0, sigma^2), as in ablation.py


def farthest_from_thick(thin_index_of_thick: np.ndarray, n_thin: int) -> int:
    """A thin slice index as far as possible from every thick slice centre, nearest the middle of the grid:
    where z-interpolation has least to go on."""
    z = np.arange(n_thin, dtype=np.float64)
    distance = np.abs(z[:, None] - np.asarray(thin_index_of_thick, dtype=np.float64)[None, :]).min(axis=1)
    candidates = np.flatnonzero(distance >= distance.max() - 1e-9)
    return int(candidates[np.argmin(np.abs(candidates - (n_thin - 1) / 2))])


def _plane(volume: Volume, view: str, z_mm: float, y: int, x: int) -> tuple[np.ndarray, bool]:
    """The 2D image of ``view`` through the slice nearest ``z_mm`` (axial) or row ``y`` / column ``x``,
    and whether row 0 is drawn at the bottom (head up)."""
    if view == "axial":
        positions = volume.slice_positions() @ volume.slice_normal
        k = int(np.argmin(np.abs(positions - z_mm)))
        return volume.array[k], False
    if view == "coronal":
        return volume.array[:, min(y, volume.shape[1] - 1), :], True
    return volume.array[:, :, min(x, volume.shape[2] - 1)], True


def _crop(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Rows/columns ``box = (top, bottom, left, right)`` as fractions of an image drawn top row first."""
    top, bottom, left, right = box
    h, w = image.shape
    r0, r1 = int(round(top * h)), max(int(round(bottom * h)), int(round(top * h)) + 1)
    c0, c1 = int(round(left * w)), max(int(round(right * w)), int(round(left * w)) + 1)
    return image[r0:r1, c0:c1]


def comparison_grid(
    images: Mapping[str, Volume],
    window: HUWindow,
    *,
    maps: Mapping[str, Volume] | None = None,
    map_max_hu: float = 200.0,
    map_mask: np.ndarray | None = None,
    views: Sequence[View] = ("axial",),
    centre: tuple[int, int, int] | None = None,
    zoom: Sequence[float] | None = None,
    panel_size_in: float = 2.0,
) -> plt.Figure:
    """One column per image (greyscale in ``window``) then per map (|error|, std: ``magma`` in
    [0, ``map_max_hu``] HU, one shared colour bar, drawn as 0 outside ``map_mask`` (z, y, x) when given, e.g.
    the scored voxels); one row per view, and with ``zoom`` one more row per
    view showing the box ``(top, bottom, left, right)`` (fractions of the picture) enlarged.

    ``centre = (z, y, x)`` (default: the middle) indexes the first volume with the finest slice spacing;
    every volume shows the slice nearest the same physical z (so a thick input shows its own slab), and
    the same row y and column x (all share one in-plane grid).
    """
    maps = dict(maps or {})
    if not images:
        raise ValueError("comparison_grid needs at least one image volume")
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {list(views)}")
    if zoom is not None and (
        len(zoom) != 4 or not (0 <= zoom[0] < zoom[1] <= 1 and 0 <= zoom[2] < zoom[3] <= 1)
    ):
        raise ValueError(
            f"zoom must be (top, bottom, left, right) fractions with top < bottom, left < right: {zoom}"
        )
    if map_mask is not None:
        maps = {
            name: v.with_array(np.where(map_mask, v.array, 0.0).astype(np.float32))
            for name, v in maps.items()
        }
    shown = {name: reorient_to_lps(v) for name, v in {**images, **maps}.items()}
    reference = min(shown.values(), key=lambda v: v.spacing[0])  # min keeps the first of equals
    z, y, x = centre if centre is not None else tuple(n // 2 for n in reference.shape)
    z_mm = float(reference.slice_positions()[z] @ reference.slice_normal)
    rows = [(view, False) for view in views]
    if zoom is not None:
        rows = [r for view in views for r in ((view, False), (view, True))]
    names = list(shown)
    # Row heights follow the physical height / width of the reference's picture, so reformats of a short
    # volume take little room; a zoom row has the box's proportions.
    heights = []
    for view, zoomed in rows:
        image, _ = _plane(reference, view, z_mm, y, x)
        ratio = image.shape[0] * panels.plane_aspect(view, reference.spacing) / image.shape[1]
        heights.append(ratio * (zoom[1] - zoom[0]) / (zoom[3] - zoom[2]) if zoomed else ratio)
    heights = [min(max(h, 0.15), 3.0) for h in heights]
    fig, axes = plt.subplots(
        len(rows),
        len(names),
        squeeze=False,
        layout="constrained",
        height_ratios=heights,
        figsize=(panel_size_in * len(names) + (0.6 if maps else 0.0), panel_size_in * sum(heights) + 0.4),
    )
    mapped = None
    for r, (view, zoomed) in enumerate(rows):
        for c, name in enumerate(names):
            ax = axes[r, c]
            image, head_up = _plane(shown[name], view, z_mm, y, x)
            if zoomed:  # crop in picture coordinates: a head-up reformat is drawn last row first
                image, head_up = _crop(image[::-1] if head_up else image, zoom), False
            is_map = name in maps
            handle = panels.show_plane(
                ax,
                image,
                view,
                shown[name].spacing,
                head_up=head_up,
                cmap=MAP_CMAP if is_map else "gray",
                vmin=0.0 if is_map else window.low,
                vmax=map_max_hu if is_map else window.high,
            )
            mapped = handle if is_map else mapped
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=12)
            if c == 0:
                ax.set_ylabel(f"{view} (zoom)" if zoomed else view, fontsize=12)
            if zoom is not None and not zoomed and c == 0:
                h, w = image.shape
                top, bottom, left, right = zoom
                y0 = (1.0 - bottom) * h - 0.5 if head_up else top * h - 0.5
                ax.add_patch(Rectangle((left * w - 0.5, y0), (right - left) * w, (bottom - top) * h,
                                       fill=False, edgecolor="#E69F00", linewidth=1.2))
    if mapped is not None:
        fig.colorbar(mapped, ax=axes[:, len(images):].ravel().tolist(), shrink=0.8, label="HU")
    return fig


def ablation_curves(
    summary: pd.DataFrame,
    *,
    metric: str = "psnr_full_db",
    metric_label: str = "PSNR (dB)",
    cost: str = "seconds",
    cost_label: str = "seconds per volume",
) -> plt.Figure:
    """Two panels from ``ctlib.studies.interp.ablation.summarize``: (a) ``metric`` against steps, one line per
    sampler and eta at the fewest samples; (b) ``metric`` against samples K at the most steps of each
    sampler and eta, with ``cost`` on a second axis (dashed)."""
    missing = {"sampler", "steps", "eta", "samples", metric, cost} - set(summary.columns)
    if missing:
        raise ValueError(f"ablation_curves: summary lacks columns {sorted(missing)}")
    fig, (ax_steps, ax_k) = plt.subplots(1, 2, figsize=(10.0, 4.0), layout="constrained")
    ax_cost = ax_k.twinx()
    k_min = summary["samples"].min()
    for i, ((sampler, eta), group) in enumerate(summary.groupby(["sampler", "eta"], sort=False)):
        colour = f"C{i % 8}"
        label = f"{sampler}, eta {eta:g}"
        by_steps = group[group["samples"] == k_min].sort_values("steps")
        ax_steps.plot(by_steps["steps"], by_steps[metric], "o-", color=colour, label=label)
        by_k = group[group["steps"] == group["steps"].max()].sort_values("samples")
        ax_k.plot(
            by_k["samples"], by_k[metric], "o-", color=colour, label=f"{label}, {group['steps'].max()} steps"
        )
        ax_cost.plot(by_k["samples"], by_k[cost], "s--", color=colour, alpha=0.6)
    ax_steps.set_xscale("log")
    ax_steps.set_xticks(
        sorted(summary["steps"].unique()), [str(s) for s in sorted(summary["steps"].unique())]
    )
    ax_steps.minorticks_off()
    ax_steps.set_xlabel("denoising steps")
    ax_steps.set_ylabel(metric_label)
    ax_steps.set_title(f"(a) {metric_label} vs steps, K = {k_min}", fontsize=12)
    ax_steps.legend(fontsize=10)
    ax_k.set_xlabel("samples K")
    ax_k.set_xticks(sorted(summary["samples"].unique()))
    ax_k.set_ylabel(metric_label)
    ax_cost.set_ylabel(f"{cost_label} (dashed)")
    ax_k.set_title(f"(b) {metric_label} and cost vs K", fontsize=12)
    ax_k.legend(fontsize=10)
    return fig


def calibration_plot(
    curves: pd.DataFrame | Mapping[str, pd.DataFrame],
    correlation: float | None = None,
    ax: plt.Axes | None = None,
    *,
    title: str | None = None,
) -> plt.Figure:
    """Calibration curves of an uncertainty map: mean |error| per quantile bin of the per-voxel std
    (``ablation.error_by_uncertainty``), one line per curve (labelled by the mapping's keys), against a
    calibrated Gaussian's E|e| = sqrt(2/pi) * std (dotted, last line). The title is ``title``, else the
    Pearson r when ``correlation`` is given."""
    if isinstance(curves, pd.DataFrame):
        curves = {"quantile bins of std": curves}
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.6, 4.2), layout="constrained")
    else:
        fig = ax.figure
    colours = ([f"C{i}" for i in range(len(curves))] if len(curves) <= 8
               else list(plt.cm.viridis(np.linspace(0.0, 0.9, len(curves)))))
    top = 1.0
    for (label, curve), colour in zip(curves.items(), colours, strict=True):
        ax.plot(curve["std_hu"], curve["abs_error_hu"], "o-", color=colour, markersize=4, label=label)
        if len(curve):
            top = max(top, float(curve["std_hu"].max()))
    ax.plot([0.0, top], [0.0, GAUSSIAN_ABS_RATIO * top], ":", color="0.3",
            label="calibrated Gaussian, E|e| = 0.80 std")
    ax.set_xlim(left=0.0)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("std of the samples (HU), bin mean")
    ax.set_ylabel("mean |error| (HU)")
    if title is not None or correlation is not None:
        ax.set_title(title if title is not None else f"Pearson r = {correlation:.2f}", fontsize=12)
    ax.legend(fontsize=8 if len(curves) > 4 else 10)
    return fig


def calibration_panels(calibration: pd.DataFrame, setting: str, volume_id: str) -> plt.Figure:
    """Calibration curves of the sampling ablation (``ablation.AblationOutput.calibration``, deciles of the
    std): (a) one line per volume at ``setting`` (a ``Setting.label``); (b) one line per setting with the
    same number of samples K on ``volume_id``. Legends give each run's Spearman rho(std, |error|)."""
    chosen = calibration[calibration["setting"] == setting]
    if chosen.empty or volume_id not in set(calibration["volume_id"]):
        raise ValueError(f"calibration_panels: no curve for setting {setting!r} or volume {volume_id!r}")
    k = int(chosen["samples"].iloc[0])
    fig, (ax_v, ax_s) = plt.subplots(1, 2, figsize=(10.0, 4.4), layout="constrained")

    def lines(frame: pd.DataFrame, by: str) -> dict[str, pd.DataFrame]:
        return {f"{name} (rho {group['std_error_spearman'].iloc[0]:.2f})": group
                for name, group in frame.groupby(by, sort=False)}

    calibration_plot(lines(chosen, "volume_id"), ax=ax_v, title=f"(a) per volume, {setting}")
    same_k = calibration[(calibration["volume_id"] == volume_id) & (calibration["samples"] == k)]
    calibration_plot(lines(same_k, "setting"), ax=ax_s, title=f"(b) per setting with K = {k}, {volume_id}")
    return fig


def table_figure(tables: Mapping[str, pd.DataFrame], *, caption: str | None = None,
                 width_in: float = 9.0, row_height_in: float = 0.28) -> plt.Figure:
    """Each DataFrame drawn as a table (index as the first columns) in its own panel titled by its key."""
    if not tables:
        raise ValueError("table_figure needs at least one table")
    heights = [len(t) + 2 for t in tables.values()]
    fig, axes = plt.subplots(len(tables), 1, figsize=(width_in, row_height_in * sum(heights) + 0.6),
                             height_ratios=heights, squeeze=False, layout="constrained")
    for ax, (title, table) in zip(axes[:, 0], tables.items(), strict=True):
        frame = table.reset_index() if any(n is not None for n in table.index.names) else table
        cells = [[_cell(v) for v in row] for row in frame.itertuples(index=False)]
        labels = [str(c).replace(" (", "\n(") for c in frame.columns]  # "agree % (variant)" on two lines
        chars = [max([max(map(len, label.split("\n"))) + 2] + [len(row[i]) + 2 for row in cells])
                 for i, label in enumerate(labels)]
        drawn = ax.table(cellText=cells, colLabels=labels, loc="center", cellLoc="center",
                         colWidths=[n / sum(chars) for n in chars])  # widths follow the longest text
        drawn.auto_set_font_size(False)
        # ~12 chars/inch at 10 pt
        drawn.set_fontsize(min(10.0, max(6.0, 10.0 * width_in * 12.0 / sum(chars))))
        drawn.scale(1.0, 1.25)
        two_lines = any("\n" in label for label in labels)
        for (row, _), cell in drawn.get_celld().items():
            if row == 0:
                cell.set_text_props(weight="bold")
                if two_lines:
                    cell.set_height(cell.get_height() * 2)
        ax.set_title(title, fontsize=12, loc="left")
        ax.axis("off")
    if caption:
        fig.text(0.0, 0.0, caption, ha="left", va="top", fontsize=9, wrap=True)
    return fig


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{value:.2f}"
    return str(value)
