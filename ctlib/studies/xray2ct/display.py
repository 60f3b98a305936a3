"""DRRs in the slice viewer (``ctlib.viz.viewer``), in register with the CT they were rendered from.

A radiograph becomes a ``Volume`` one voxel thick along its beam: scaled to the isocentre plane (detector
pixel / magnification), centred on the isocentre, spanning ``thickness_mm`` along the beam. In a compare
grid with the CT, the PA DRR then fills the coronal pane and the lateral DRR the sagittal pane, both at the
CT's physical scale, and the shared crosshair points at the same superior-inferior and left-right (PA) or
anterior-posterior (lateral) position in every row; their other panes show the DRR smeared along the beam
(a back-projection). The register is exact only in the isocentre plane (cone-beam magnification varies
with depth). Values are ``DRR_SCALE`` x the line integral, so the viewer's integer readout (labelled HU)
shows it to three decimals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctlib.io.volume import Volume
from ctlib.physics.drr import ConeBeam

DRR_SCALE = 1000.0


def isocentre_pixel_mm(geometry: ConeBeam) -> tuple[float, float]:
    """Detector pixel ``(row, col)`` size projected to the isocentre plane: pitch * sid / sdd (mm)."""
    magnification = geometry.source_to_detector_mm / geometry.source_to_isocentre_mm
    return tuple(float(s) / int(n) / magnification
                 for s, n in zip(geometry.detector_size_mm, geometry.detector_pixels, strict=True))


def drr_volume(
    image: np.ndarray,
    angle_deg: float,
    geometry: ConeBeam,
    centre_lps_mm: np.ndarray | tuple[float, float, float],
    thickness_mm: float,
    scale: float = DRR_SCALE,
) -> Volume:
    """A DRR ``(R, C)`` (row 0 superior) as a one-voxel-thick LPS ``Volume`` for the viewer: ``(R, 1, C)``
    for the PA view (0 degrees, columns to the patient's left), ``(R, C, 1)`` for the lateral (90 degrees,
    columns to posterior); values ``scale * image``."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"a DRR is (rows, cols), got shape {image.shape}")
    rows, cols = image.shape
    if (rows, cols) != tuple(geometry.detector_pixels):
        raise ValueError(f"DRR shape {image.shape} differs from the detector's {geometry.detector_pixels}")
    dv, du = isocentre_pixel_mm(geometry)
    cx, cy, cz = (float(c) for c in centre_lps_mm)
    z0 = cz - dv * (rows - 1) / 2.0
    values = scale * image[::-1]  # volume z increases superior, image rows run inferior
    angle = float(angle_deg) % 360.0
    if np.isclose(angle, 0.0):
        array, spacing = values[:, None, :], (dv, float(thickness_mm), du)
        origin = (cx - du * (cols - 1) / 2.0, cy, z0)
    elif np.isclose(angle, 90.0):
        array, spacing = values[:, :, None], (dv, du, float(thickness_mm))
        origin = (cx, cy - du * (cols - 1) / 2.0, z0)
    else:
        raise ValueError(f"only the PA (0) and lateral (90 degree) views map onto viewer panes, got "
                         f"{angle_deg}")
    return Volume(array=np.ascontiguousarray(array), spacing=spacing, origin=origin,
                  meta={"drr_angle_deg": angle, "drr_scale": float(scale)})


class SideBySide:
    """A viewer and a static figure side by side (an ipywidgets ``HBox``); its text form names both
    without widget ids, so nbval compares it from run to run."""

    def __init__(self, viewer: Any, figure: Any, width_px: int = 420) -> None:
        import io

        import ipywidgets as widgets

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        self.viewer, self.figure_name = viewer, figure.get_label() or "figure"
        image = widgets.Image(value=buffer.getvalue(), format="png",
                              layout=widgets.Layout(width=f"{width_px}px"))
        self.widget = widgets.HBox([viewer.widget, image], layout=widgets.Layout(align_items="flex-start"))

    def __repr__(self) -> str:
        return f"SideBySide({self.viewer!r} | {self.figure_name})"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)
        return bundle
