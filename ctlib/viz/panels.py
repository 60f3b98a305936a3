"""Static panels of CT volumes under named HU windows, with the physical aspect ratio of the voxels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from ctlib.data.windows import HUWindow
from ctlib.io.orientation import reorient_to_lps
from ctlib.io.volume import Volume


def _show(ax: plt.Axes, image: np.ndarray, window: HUWindow, aspect: float, superior_up: bool) -> None:
    ax.imshow(image, cmap="gray", vmin=window.low, vmax=window.high, aspect=aspect,
              origin="lower" if superior_up else "upper")
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
    fig, axes = plt.subplots(len(volumes), n_cols, figsize=(panel_size_in * n_cols, panel_size_in * len(volumes)),
                             squeeze=False, layout="constrained")
    for row, (name, volume) in enumerate(volumes.items()):
        # Radiological convention: anterior up, patient's right on the image's left, head up.
        volume = reorient_to_lps(volume)
        z, y, _ = volume.shape
        dz, dy, dx = volume.spacing
        for col, window in enumerate(windows):
            _show(axes[row, col], volume.array[z // 2], window, dy / dx, superior_up=False)
            if row == 0:
                axes[row, col].set_title(f"axial, {window.name}")
        _show(axes[row, -1], volume.array[:, y // 2, :], windows[0], dz / dx, superior_up=True)
        if row == 0:
            axes[row, -1].set_title(f"coronal, {windows[0].name}")
        axes[row, 0].set_ylabel(name, fontsize=10)
    return fig
