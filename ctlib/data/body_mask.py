"""Body mask by thresholding: the region over which slice-interpolation metrics are scored.

Algorithm (classic threshold + connected components, as in most CT preprocessing pipelines):

1. ``hu > threshold_hu`` (default -500 HU: between air, about -1000, and fat, about -100).
2. Optional binary opening per axial slice (``opening_iterations`` with a 3x3 cross), to cut thin
   bridges between the patient and the table or cables.
3. Keep the largest 3-D connected component (6-connectivity): the patient; a table separated from
   it by an air gap, and blankets or cables, are dropped.
4. Fill holes per axial slice, so the lungs, the airways and bowel gas (enclosed in the axial
   plane) are inside the body. Per slice rather than in 3-D because lungs that reach the first or
   last slice of the scan are open to the volume boundary in 3-D.

Limits: a table in contact with the patient over a wide area (mattress, immobilisation masks) stays
attached, since no threshold separates them; in a field of view cropped inside the body, air
regions that touch the image edge in a slice (a lung cut by the crop) are not holes and stay out.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctlib.io.volume import Volume


def body_mask(
    volume_or_array: Volume | np.ndarray,
    threshold_hu: float = -500.0,
    opening_iterations: int = 1,
) -> np.ndarray:
    """Body mask (threshold, largest 3-D component, per-slice hole filling): bool ``(z, y, x)``."""
    hu = volume_or_array.array if isinstance(volume_or_array, Volume) else np.asarray(volume_or_array)
    if hu.ndim != 3:
        raise ValueError(f"body_mask expects a (z, y, x) volume, got shape {hu.shape}")
    if int(opening_iterations) < 0:
        raise ValueError(f"opening_iterations must be >= 0, got {opening_iterations}")

    mask = hu > threshold_hu
    if opening_iterations > 0:
        # In-plane only: a 3-D opening would also erase structures one slice thick at the z ends.
        cross = np.zeros((3, 3, 3), dtype=bool)
        cross[1] = ndimage.generate_binary_structure(2, 1)
        mask = ndimage.binary_opening(mask, structure=cross, iterations=int(opening_iterations))

    labels, n_components = ndimage.label(mask)
    if n_components == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(np.argmax(sizes))

    for k in range(mask.shape[0]):
        if mask[k].any():
            mask[k] = ndimage.binary_fill_holes(mask[k])
    return mask


def body_fraction(mask: np.ndarray) -> float:
    """Fraction of voxels inside the mask, in ``[0, 1]``."""
    mask = np.asarray(mask)
    if mask.size == 0:
        raise ValueError("body_fraction of an empty mask (no voxels)")
    return float(np.count_nonzero(mask)) / float(mask.size)
