"""Figures of the X-ray -> CT study: the biplanar geometry seen from above, DRR panels, stored pairs."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from ctlib.physics.drr import ConeBeam
from ctlib.studies.xray2ct.pairs import ANGLES_DEG
from ctlib.viz import panels
from ctlib.viz.style import OKABE_ITO

VIEW_NAMES = {0.0: "PA", 90.0: "lateral"}


def geometry_numbers(geometry: ConeBeam) -> dict[str, float]:
    """SID, SDD, magnification, detector size and pitch, and the pixel at the isocentre (mm)."""
    magnification = geometry.source_to_detector_mm / geometry.source_to_isocentre_mm
    pitch = geometry.detector_size_mm[1] / geometry.detector_pixels[1]
    return {
        "source_to_isocentre_mm": geometry.source_to_isocentre_mm,
        "source_to_detector_mm": geometry.source_to_detector_mm,
        "magnification": magnification,
        "detector_mm": geometry.detector_size_mm[1],
        "detector_pixels": geometry.detector_pixels[1],
        "detector_pitch_mm": pitch,
        "isocentre_pixel_mm": pitch / magnification,
    }


def geometry_figure(
    geometry: ConeBeam, fov_mm: float, axial_hu: np.ndarray | None = None, ax: plt.Axes | None = None
) -> plt.Figure:
    """Top view (from superior; anterior up, the patient's right on the left) of the two cone beams:
    sources, flat detectors, edge and central rays, the FOV cube and, if given, its axial slice ``(S, S)``."""
    fig = ax.figure if ax is not None else plt.figure(figsize=(6.4, 6.4), layout="constrained")
    ax = ax if ax is not None else fig.add_subplot()
    half = fov_mm / 2.0
    if axial_hu is not None:
        ax.imshow(axial_hu, cmap="gray", vmin=-1000, vmax=1000, extent=(-half, half, half, -half), zorder=0)
    ax.add_patch(plt.Rectangle((-half, -half), fov_mm, fov_mm, fill=False, lw=1.5, ec="0.3", zorder=2))
    sid, sdd = geometry.source_to_isocentre_mm, geometry.source_to_detector_mm
    width = geometry.detector_size_mm[1]
    for k, angle in enumerate(ANGLES_DEG):
        theta = np.radians(angle)
        s = np.array([-np.sin(theta), np.cos(theta)])  # towards the source, (x, y)
        u = np.array([np.cos(theta), np.sin(theta)])  # detector columns
        source, centre = sid * s, -(sdd - sid) * s
        ends = [centre - u * width / 2, centre + u * width / 2]
        color = OKABE_ITO[0 if k == 0 else 3]
        for end in ends:
            ax.plot(*zip(source, end, strict=True), color=color, lw=0.8, alpha=0.7)
        ax.plot(*zip(source, centre, strict=True), color=color, lw=0.8, ls="--")
        ax.plot(*zip(*ends, strict=True), color=color, lw=4, solid_capstyle="butt")
        ax.plot(*source, "o", color=color, ms=8)
        name = VIEW_NAMES[angle]
        ax.annotate(f"{name} source", source, textcoords="offset points", xytext=(8, 8), color=color)
        ax.annotate(f"{name} detector", ends[1], textcoords="offset points", xytext=(4, -14), color=color)
    n = geometry_numbers(geometry)
    ax.text(0.02, 0.02,
            f"SID {n['source_to_isocentre_mm']:.0f} mm, SDD {n['source_to_detector_mm']:.0f} mm\n"
            f"magnification {n['magnification']:.3f}\n"
            f"detector {n['detector_mm']:.0f} mm, {n['detector_pixels']} px"
            f" of {n['detector_pitch_mm']:.2f} mm\n"
            f"at isocentre {n['isocentre_pixel_mm']:.2f} mm/px; FOV {fov_mm:.0f} mm",
            transform=ax.transAxes, fontsize=10, va="bottom", bbox={"fc": "white", "ec": "0.7"})
    reach = max(sid, sdd - sid + 10) + 40
    ax.set_xlim(-reach, reach)
    ax.set_ylim(reach, -reach)  # y (posterior) down: anterior up
    ax.set_aspect("equal")
    ax.set_xlabel("x (mm, to the patient's left)")
    ax.set_ylabel("y (mm, to posterior)")
    ax.set_title("Biplanar cone-beam geometry (top view)")
    fig.set_label("geometry top view")
    return fig


def drr_panels(drrs: np.ndarray, geometry: ConeBeam, *, panel_in: float = 2.6) -> plt.Figure:
    """PA and lateral DRRs ``(2, R, C)`` as line integrals (bright = attenuating, the radiograph's
    convention) and as intensity ``I / I0 = exp(-L)`` (bright = transmitted, the detector's signal); each
    windowed from 0 to its 99.5th percentile over both views."""
    drrs = np.asarray(drrs)
    fig, axes = plt.subplots(2, 2, figsize=(2 * panel_in + 1.2, 2 * panel_in + 0.6), layout="constrained")
    h, w = (s / 2 for s in geometry.detector_size_mm)
    for k, angle in enumerate(ANGLES_DEG):
        for c, (values, label, limits) in enumerate((
            (drrs[k], "line integral", (0.0, float(np.percentile(drrs, 99.5)))),
            (np.exp(-drrs[k]), "I / I0", (0.0, float(np.percentile(np.exp(-drrs), 99.5)))),
        )):
            ax = axes[k, c]
            image = ax.imshow(values, cmap="gray", vmin=limits[0], vmax=limits[1], extent=(-w, w, h, -h))
            ax.set_title(f"{VIEW_NAMES[angle]}, {label}")
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(image, ax=ax, shrink=0.8)
    fig.set_label("DRR panels")
    return fig


def pair_grid(
    volumes_hu: np.ndarray,
    drrs: np.ndarray,
    spacing_mm: float,
    titles: Sequence[str],
    *,
    panel_in: float = 1.8,
) -> plt.Figure:
    """One row per case: coronal CT, PA DRR, sagittal CT, lateral DRR (radiological view, head up)."""
    n = len(volumes_hu)
    fig, axes = plt.subplots(n, 4, figsize=(4 * panel_in, n * panel_in + 0.4), layout="constrained",
                             squeeze=False)
    vmax = float(np.percentile(drrs, 99.5)) or 1.0
    spacing = (spacing_mm,) * 3
    for r in range(n):
        hu, pair = volumes_hu[r], drrs[r]
        s = hu.shape[0]
        panels.show_plane(axes[r, 0], hu[:, s // 2, :], "coronal", spacing, head_up=True, cmap="gray",
                          vmin=-1000, vmax=1000)
        axes[r, 1].imshow(pair[0], cmap="gray", vmin=0, vmax=vmax)
        # sagittal pane: anterior on the left, head up (as the viewer)
        panels.show_plane(axes[r, 2], hu[:, :, s // 2], "sagittal", spacing, head_up=True, cmap="gray",
                          vmin=-1000, vmax=1000)
        axes[r, 3].imshow(pair[1], cmap="gray", vmin=0, vmax=vmax)
        axes[r, 0].set_ylabel(titles[r], fontsize=9)
    for c, title in enumerate(("coronal CT", "PA DRR", "sagittal CT", "lateral DRR")):
        axes[0, c].set_title(title)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
