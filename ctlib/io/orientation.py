"""Reorientation to the canonical LPS grid (like MONAI's ``Orientation(axcodes="LPS")`` on (x, y, z)).

In the canonical grid the x index runs to the patient's left, y posterior and z superior, so an axial
slice drawn with row 0 at the top shows anterior up and the patient's right on the image's left
(the radiological convention), and a coronal reformat drawn with origin "lower" has the head up.
"""

from __future__ import annotations

import numpy as np

from ctlib.io.volume import Volume


def lps_axis_codes(volume: Volume) -> str:
    """Orientation code of the index axes (x, y, z), e.g. ``"LPS"`` or ``"LAS"`` (nearest axis)."""
    positive, negative = "LPS", "RAI"
    codes = []
    for column in volume.direction.T:
        axis = int(np.argmax(np.abs(column)))
        codes.append(positive[axis] if column[axis] > 0 else negative[axis])
    return "".join(codes)


def reorient(volume: Volume, codes: str = "LPS") -> Volume:
    """The same voxels on a grid whose index axes (x, y, z) point as close as possible to ``codes``.

    ``codes`` names, for the x, y and z index axes in turn, the direction each increases towards: one of
    ``L``/``R``, ``P``/``A``, ``S``/``I`` in that order (``"LPS"``, the DICOM canonical grid, or ``"RAS"``,
    nibabel's canonical grid). Axes are only permuted and flipped (no resampling); the geometry follows,
    so every voxel keeps its LPS position.
    """
    codes = str(codes).upper()
    if len(codes) != 3 or codes[0] not in "LR" or codes[1] not in "PA" or codes[2] not in "SI":
        raise ValueError(f"orientation codes must be one of L/R, P/A, S/I in that order, got {codes!r}")
    target_signs = [1.0 if code in "LPS" else -1.0 for code in codes]
    # lps_of_index[a] = which LPS axis index-axis a (x=0, y=1, z=2) runs along, and in which sense.
    lps_of_index = [int(np.argmax(np.abs(c))) for c in volume.direction.T]
    if sorted(lps_of_index) != [0, 1, 2]:
        raise ValueError(f"direction too oblique to reorient unambiguously:\n{volume.direction}")
    signs = [float(np.sign(volume.direction[lps_of_index[a], a])) for a in range(3)]
    # New index axis b (x, y, z) is the old index axis a with lps_of_index[a] == b.
    old_for_new = [lps_of_index.index(b) for b in range(3)]
    # Array axes are (z, y, x) = index axes (2, 1, 0).
    array = np.transpose(volume.array, [2 - old_for_new[2 - k] for k in range(3)])
    spacing_xyz = np.array(volume.spacing[::-1])
    new_spacing_xyz = spacing_xyz[old_for_new]
    origin = np.asarray(volume.origin, dtype=np.float64).copy()
    new_direction = volume.direction[:, old_for_new].copy()
    shape_xyz = array.shape[::-1]
    for b in range(3):
        if signs[old_for_new[b]] != target_signs[b]:
            origin += new_direction[:, b] * new_spacing_xyz[b] * (shape_xyz[b] - 1)
            new_direction[:, b] *= -1
            array = np.flip(array, axis=2 - b)
    return volume.with_array(
        np.ascontiguousarray(array),
        spacing=tuple(new_spacing_xyz[::-1]),
        origin=tuple(origin),
        direction=new_direction,
    )


def reorient_to_lps(volume: Volume) -> Volume:
    """``reorient(volume, "LPS")``: x index to the patient's left, y posterior, z superior."""
    return reorient(volume, "LPS")
