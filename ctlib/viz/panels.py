"""Static panels of CT volumes under named HU windows, with the physical aspect ratio of the voxels.

``show_plane`` is the one way a figure draws a plane of a ``(z, y, x)`` volume: every study's figures
call it, so a thick slice looks thick everywhere (the slice viewer's panes: ``ctlib.viz.view_state``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.image import AxesImage

from ctlib.data.windows import HUWindow
from ctlib.io.orientation import reorient_to_lps
from ctlib.io.volume import Volume
from ctlib.viz.view_state import plane_spacing_mm


def plane_aspect(view: str, spacing_mm: Sequence[float]) -> float:
    """Height / width of one pixel of a ``view`` plane (row spacing / column spacing), for ``imshow``."""
    row_mm, col_mm = plane_spacing_mm(view, spacing_mm)
    return row_mm / col_mm


def show_plane(
    ax: plt.Axes,
    image: np.ndarray,
    view: str,
    spacing_mm: Sequence[float],
    *,
    head_up: bool = False,
    **imshow: Any,
) -> AxesImage:
    """``ax.imshow`` of a plane (2D, or RGB ``(H, W, 3)``) of a ``(z, y, x)`` volume of ``spacing_mm``
    ``(dz, dy, dx)`` at the physical aspect of its pixels; ``head_up`` draws row 0 at the bottom (a
    reformat of an LPS volume); ``imshow`` passes on (cmap, vmin, vmax, norm, alpha...)."""
    return ax.imshow(image, aspect=plane_aspect(view, spacing_mm), origin="lower" if head_up else "upper",
                     **imshow)


def _show(ax: plt.Axes, image: np.ndarray, view: str, spacing_mm: Sequence[float], window: HUWindow) -> None:
    show_plane(ax, image, view, spacing_mm, head_up=view != "axial", cmap="gray", vmin=window.low,
               vmax=window.high)
    ax.set_xticks([])
    ax.set_yticks([])


def window_grid(
    volumes: Mapping[str, Volume],
    windows: Sequence[HUWindow],
    *,
    panel_size_in: float = 2.4,
) -> plt.Figure:
    """One row per volume: the middle axial slice under each window, then the middle coronal reformat,
    in the radiological convention (volumes reoriented to LPS for display).

    Aspect ratios follow the voxel spacing (axial dy/dx, coronal dz/dx), so thick slices look thick.
    """
    if not volumes:
        raise ValueError("window_grid needs at least one volume")
    n_cols = len(windows) + 1
    fig, axes = plt.subplots(
        len(volumes),
        n_cols,
        figsize=(panel_size_in * n_cols, panel_size_in * len(volumes)),
        squeeze=False,
        layout="constrained",
    )
    for row, (name, volume) in enumerate(volumes.items()):
        # Radiological convention: anterior up, patient's right on the image's left, head up.
        volume = reorient_to_lps(volume)
        z, y, _ = volume.shape
        for col, window in enumerate(windows):
            _show(axes[row, col], volume.array[z // 2], "axial", volume.spacing, window)
            if row == 0:
                axes[row, col].set_title(f"axial, {window.name}")
        _show(axes[row, -1], volume.array[:, y // 2, :], "coronal", volume.spacing, windows[0])
        if row == 0:
            axes[row, -1].set_title(f"coronal, {windows[0].name}")
        axes[row, 0].set_ylabel(name, fontsize=10)
    return fig
