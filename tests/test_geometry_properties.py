"""Property tests (hypothesis): DICOM series and NIfTI files written by ctlib read back with the same
voxels and geometry.

For random shapes, spacings, origins and orientations (any rotation, with or without a flip of the
slice axis), integer HU in the int16 range and a few wider ranges: ``write_dicom_series`` then
``read_dicom_series`` gives the same voxels exactly and the same geometry to 1e-4 mm. Flipped slice
order is written as is; the reader sorts slices along the normal, so the read volume may run the other
way: it is compared in LPS, voxel by voxel, through each volume's own affine.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctlib.io.dicom_read import read_dicom_series
from ctlib.io.dicom_write import write_dicom_series
from ctlib.io.nifti import read_nifti, write_nifti
from ctlib.io.volume import Volume

PROFILE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _rotation(angles: tuple[float, float, float], flip_slices: bool) -> np.ndarray:
    """An orthonormal direction matrix from three Euler angles, the slice axis flipped when asked."""
    a, b, c = angles
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    direction = rz @ ry @ rx
    if flip_slices:
        direction[:, 2] *= -1
    return direction


@st.composite
def volumes(draw: st.DrawFn) -> Volume:
    shape = (
        draw(st.integers(2, 4)),  # one slice has no slice spacing: refused by the reader
        draw(st.integers(1, 6)),
        draw(st.integers(1, 6)),
    )
    spacing = tuple(draw(st.floats(0.2, 6.0)) for _ in range(3))
    origin = tuple(draw(st.floats(-500.0, 500.0)) for _ in range(3))
    angles = tuple(draw(st.floats(-np.pi, np.pi)) for _ in range(3))
    axial = draw(st.booleans())  # half the cases: the common identity orientation
    direction = np.eye(3) if axial else _rotation(angles, draw(st.booleans()))
    low = draw(st.sampled_from([-1024, -3024, -32768, 0, 10_000]))
    high = low + draw(st.sampled_from([1, 400, 4095, 40_000]))
    seed = draw(st.integers(0, 2**31 - 1))
    array = np.random.default_rng(seed).integers(low, high, size=shape, endpoint=True).astype(np.float32)
    return Volume(array=array, spacing=spacing, origin=origin, direction=direction)


def _lps_points(volume: Volume) -> np.ndarray:
    """LPS position of every voxel centre, ``(z, y, x, 3)``."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in volume.shape), indexing="ij")
    index = np.stack([x, y, z, np.ones_like(x)], axis=-1).astype(np.float64)
    return (index @ volume.index_to_lps().T)[..., :3]


@PROFILE
@given(volumes())
def test_dicom_round_trip_keeps_voxels_and_geometry(volume: Volume) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_dicom_series(volume, Path(tmp) / "series")
        back = read_dicom_series(folder)
    assert back.shape == volume.shape
    assert np.allclose(back.spacing, volume.spacing, atol=1e-4)
    assert np.allclose(back.direction[:, :2], volume.direction[:, :2], atol=1e-5)
    # The reader may order slices the other way (a flipped slice axis): compare voxel by voxel in LPS.
    if np.allclose(back.direction[:, 2], volume.direction[:, 2], atol=1e-5):
        expected, points = volume.array, _lps_points(volume)
    else:
        expected, points = volume.array[::-1], _lps_points(volume)[::-1]
    assert np.array_equal(back.array, expected)
    assert np.allclose(_lps_points(back), points, atol=1e-3)


@PROFILE
@given(volumes(), st.sampled_from([".nii", ".nii.gz"]))
def test_nifti_round_trip_keeps_voxels_and_geometry(volume: Volume, suffix: str) -> None:
    """NIfTI keeps the slice order as written, so the arrays and affines compare directly."""
    with tempfile.TemporaryDirectory() as tmp:
        back = read_nifti(write_nifti(volume, Path(tmp) / f"v{suffix}"), fill_below_air=False)
    assert back.shape == volume.shape
    assert np.array_equal(back.array, volume.array)
    assert np.allclose(back.index_to_lps(), volume.index_to_lps(), atol=1e-3)
    assert np.allclose(back.spacing, volume.spacing, atol=1e-5)
