"""Thick-slice simulation, thick/thin pairs and the linear / cubic z-upsampling baselines."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ctlib.data import windows
from ctlib.io.volume import Volume
from ctlib.studies.interp import thick_slices


def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues' rotation matrix."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * k @ k


DIRECTIONS = {
    "identity": np.eye(3),
    "reversed_z": np.diag([1.0, 1.0, -1.0]),  # slices run inferior (feet-first stacks)
    "oblique": _rotation(np.array([1.0, 2.0, 0.5]), 0.4),
}


def _volume(n_slices: int = 26, direction: np.ndarray | None = None, seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(
        array=rng.normal(0, 100, (n_slices, 3, 4)).astype(np.float32),
        spacing=(1.25, 0.7, 0.8),
        origin=(-10.0, 20.0, 30.0),
        direction=np.eye(3) if direction is None else direction,
        slice_thickness_mm=1.5,
    )


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
@pytest.mark.parametrize(
    "factor, slab, offset", [(4, None, 0), (3, 5, 2), (2, 1, 1), (5, 2, 0), (1, None, 0)]
)
def test_slab_geometry_is_exact(direction, factor, slab, offset):
    thin = _volume(direction=DIRECTIONS[direction])
    thick = thick_slices.simulate_thick(thin, factor, "slab", slab=slab, offset=offset)
    slab = factor if slab is None else slab
    assert thick.spacing == pytest.approx((factor * 1.25, 0.7, 0.8))
    assert thick.slice_thickness_mm == pytest.approx(slab * 1.25)
    np.testing.assert_allclose(thick.direction, thin.direction)
    thin_pos = thin.slice_positions()
    n_thick = (thin.shape[0] - offset - slab) // factor + 1
    assert thick.shape == (n_thick, 3, 4)
    for k, pos in enumerate(thick.slice_positions()):
        start = offset + k * factor
        np.testing.assert_allclose(pos, thin_pos[start : start + slab].mean(axis=0), atol=1e-9)
        np.testing.assert_allclose(thick.array[k], thin.array[start : start + slab].mean(axis=0), atol=1e-4)


def test_slab_values_closed_form():
    ramp = np.arange(12, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    thick = thick_slices.simulate_thick(Volume(ramp, (2.0, 1.0, 1.0)), 4)
    np.testing.assert_array_equal(thick.array[:, 0, 0], [1.5, 5.5, 9.5])  # mean of 4k..4k+3
    assert thick.origin == pytest.approx((0.0, 0.0, 3.0))  # centre of slab 0: thin index 1.5 * 2 mm
    assert thick.meta["thick_slices"]["thin_index_of_thick0"] == 1.5


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_decimate_picks_every_factor_th_slice(direction):
    thin = _volume(n_slices=20, direction=DIRECTIONS[direction])
    thick = thick_slices.simulate_thick(thin, 6, "decimate", offset=1)
    np.testing.assert_array_equal(thick.array, thin.array[[1, 7, 13, 19]])
    np.testing.assert_allclose(thick.slice_positions(), thin.slice_positions()[[1, 7, 13, 19]], atol=1e-9)
    assert thick.spacing[0] == pytest.approx(7.5)
    assert thick.slice_thickness_mm == 1.5  # the thin thickness, not the spacing
    no_thickness = thick_slices.simulate_thick(
        thin.with_array(thin.array, slice_thickness_mm=None), 6, "decimate"
    )
    assert no_thickness.slice_thickness_mm == pytest.approx(1.25)


def test_argument_errors_are_clear():
    thin = _volume(n_slices=5)
    with pytest.raises(ValueError, match=r"\['slab', 'decimate'\]"):
        thick_slices.simulate_thick(thin, 2, mode="mean")  # type: ignore[arg-type]
    for bad in (0, 2.0, True, -1):
        with pytest.raises(ValueError, match="factor must be an integer >= 1"):
            thick_slices.simulate_thick(thin, bad)
    with pytest.raises(ValueError, match="slab must be an integer >= 1"):
        thick_slices.simulate_thick(thin, 2, slab=0)
    with pytest.raises(ValueError, match="offset must be an integer >= 0"):
        thick_slices.simulate_thick(thin, 2, offset=-1)
    with pytest.raises(ValueError, match="need offset \\+ slab = 0 \\+ 6 = 6 thin slices, the volume has 5"):
        thick_slices.simulate_thick(thin, 6)
    with pytest.raises(ValueError, match="slab applies only"):
        thick_slices.simulate_thick(thin, 2, mode="decimate", slab=2)
    with pytest.raises(ValueError, match="one thick/thin block"):
        thick_slices.thick_thin_pair(thin, 4, slab=1, offset=3)


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
@pytest.mark.parametrize(
    "factor, mode, slab, offset, observed_every",
    [(4, "slab", None, 0, None), (3, "slab", 3, 2, 1), (6, "decimate", None, 1, 0), (4, "slab", 6, 0, None)],
)
def test_pair_is_in_register(direction, factor, mode, slab, offset, observed_every):
    volume = _volume(n_slices=29, direction=DIRECTIONS[direction])
    pair = thick_slices.thick_thin_pair(volume, factor, mode, slab=slab, offset=offset)
    n_thick = pair.thick.shape[0]
    # Slabs: n_thick blocks of factor slices. Decimation: from the first to the last observed slice.
    n_thin = (n_thick - 1) * factor + 1 if mode == "decimate" else n_thick * factor
    assert pair.thin.shape[0] == n_thin == pair.observed.size
    np.testing.assert_array_equal(pair.thin.array, volume.array[offset : offset + n_thin])
    np.testing.assert_allclose(
        pair.thin.slice_positions(), volume.slice_positions()[offset : offset + pair.thin.shape[0]]
    )
    # Each thick slice sits where thin_index_of_thick says, on the cropped thin grid.
    expected = (
        np.asarray(pair.thin.origin) + pair.thin_index_of_thick[:, None] * 1.25 * pair.thin.slice_normal
    )
    np.testing.assert_allclose(pair.thick.slice_positions(), expected, atol=1e-9)
    if observed_every is None:
        assert not pair.observed.any() and pair.synthesized.all()
    else:
        np.testing.assert_array_equal(
            np.flatnonzero(pair.observed), observed_every + factor * np.arange(n_thick)
        )
    if mode == "decimate":
        np.testing.assert_array_equal(pair.thick.array, pair.thin.array[pair.observed])


def _linear_in_z(volume: Volume) -> Volume:
    k = np.arange(volume.shape[0], dtype=np.float64)[:, None, None]
    slope = np.arange(1.0, 1.0 + volume.shape[1] * volume.shape[2]).reshape(1, *volume.shape[1:])
    return volume.with_array((30.0 + slope * (k - 10.0)).astype(np.float32))


@pytest.mark.parametrize("mode, factor", [("slab", 4), ("slab", 3), ("decimate", 6)])
def test_linear_upsampling_reproduces_a_ramp(mode, factor):
    volume = _linear_in_z(_volume(n_slices=30, direction=DIRECTIONS["oblique"]))
    pair = thick_slices.thick_thin_pair(volume, factor, mode)
    up = thick_slices.upsample_linear_z(pair.thick, factor, n_thin=pair.thin.shape[0])
    assert up.shape == pair.thin.shape
    assert up.spacing == pytest.approx(pair.thin.spacing)
    np.testing.assert_allclose(up.origin, pair.thin.origin, atol=1e-9)
    np.testing.assert_allclose(up.direction, pair.thin.direction)
    index = np.arange(up.shape[0])
    first, last = pair.thin_index_of_thick[0], pair.thin_index_of_thick[-1]
    inside = (index >= first) & (index <= last)
    np.testing.assert_allclose(up.array[inside], pair.thin.array[inside], atol=1e-3)
    # Outside the thick range: edge replication.
    for outside, edge in ((index < first, pair.thick.array[0]), (index > last, pair.thick.array[-1])):
        np.testing.assert_array_equal(up.array[outside], np.broadcast_to(edge, up.array[outside].shape))
    assert "thick_slices" not in up.meta and up.meta["upsampled"]["method"] == "linear"


def test_cubic_upsampling_reproduces_a_cubic_and_linear_does_not():
    k = np.arange(37, dtype=np.float64)
    poly = 0.002 * (k - 15) ** 3 - 0.1 * (k - 15) ** 2 + 2.0 * k - 40.0
    volume = Volume(np.broadcast_to(poly[:, None, None], (37, 2, 3)).astype(np.float32), (1.0, 1.0, 1.0))
    pair = thick_slices.thick_thin_pair(volume, 6, "decimate")
    assert pair.thin.shape[0] == 37  # every observed slice kept: 0, 6, ..., 36
    cubic = thick_slices.upsample_cubic_z(pair.thick, 6, n_thin=37)
    linear = thick_slices.upsample_z(pair.thick, 6, "linear", n_thin=37)
    np.testing.assert_allclose(cubic.array, pair.thin.array, atol=1e-3)
    assert np.abs(linear.array - pair.thin.array).max() > 0.5
    # The default grid is n_thick * factor slices: past the last thick slice, edge replication.
    longer = thick_slices.upsample_cubic_z(pair.thick, 6)
    assert longer.shape[0] == 42
    np.testing.assert_array_equal(longer.array[36:], np.broadcast_to(pair.thick.array[-1], (6, 2, 3)))


def test_upsampling_by_another_factor_keeps_the_thin_crop_start():
    volume = _linear_in_z(_volume(n_slices=30))
    pair = thick_slices.thick_thin_pair(volume, 6, "slab")  # thick centres at thin index 2.5 + 6k
    half = thick_slices.upsample_linear_z(pair.thick, 3)  # a 2.5 mm grid starting where pair.thin does
    assert half.shape[0] == 15 and half.spacing[0] == pytest.approx(2.5)
    np.testing.assert_allclose(half.origin, pair.thin.origin, atol=1e-9)
    np.testing.assert_allclose(half.array[2:13], pair.thin.array[4:26:2], atol=1e-3)


def test_upsampling_native_thick_volume_and_few_slices():
    native = Volume(np.stack([np.zeros((2, 2)), np.full((2, 2), 10.0)]).astype(np.float32), (6.0, 1.0, 1.0),
                    origin=(0.0, 0.0, 100.0))
    up = thick_slices.upsample_linear_z(native, 3)  # no meta: thick slices centred in their blocks
    assert up.shape == (6, 2, 2) and up.spacing[0] == 2.0 and up.origin[2] == pytest.approx(98.0)
    np.testing.assert_allclose(up.array[:, 0, 0], [0, 0, 10 / 3, 20 / 3, 10, 10], atol=1e-5)
    np.testing.assert_allclose(thick_slices.upsample_cubic_z(native, 3).array, up.array, atol=1e-5)
    one = thick_slices.upsample_cubic_z(native.with_array(native.array[:1]), 4)
    assert one.shape == (4, 2, 2) and not one.array.any()
    with pytest.raises(ValueError, match="method must be one of"):
        thick_slices.upsample_z(native, 2, "nearest")  # type: ignore[arg-type]


def _read_ct(path) -> Volume:
    try:
        from ctlib.io.nifti import read_nifti
    except ImportError:  # the reader is optional for this check: spacing is all it needs
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj).transpose(2, 1, 0).astype(np.float32)
        return Volume(array=array, spacing=tuple(float(z) for z in img.header.get_zooms()[:3][::-1]))
    return read_nifti(path)


def _psnr_unit(prediction: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB for images already scaled to [0, 1] (peak 1)."""
    mse = float(np.mean((prediction.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return 10.0 * np.log10(1.0 / mse)


@pytest.mark.realdata
def test_real_ct_x6_pairs_and_linear_baseline_psnr(data_root):
    volume = _read_ct(data_root / "totalseg_example/aorta_ct_cropped_1.5mm.nii.gz")
    assert volume.shape == (164, 126, 120) and volume.spacing[0] == pytest.approx(1.5)

    slab = thick_slices.thick_thin_pair(volume, 6, "slab")
    assert slab.thick.shape[0] == 27 and slab.thin.shape[0] == 162
    assert slab.thick.spacing[0] == pytest.approx(9.0) and slab.thick.slice_thickness_mm == pytest.approx(9.0)
    thin_pos = slab.thin.slice_positions()
    for k, pos in enumerate(slab.thick.slice_positions()):
        np.testing.assert_allclose(pos, thin_pos[6 * k : 6 * k + 6].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(slab.thick.array[5], slab.thin.array[30:36].mean(axis=0), atol=1e-3)
    assert not slab.observed.any()

    # Data README: linear x6 from every 6th slice gives 28.2 dB in [-1024, 3071] HU -> [0, 1]. That
    # figure counts every slice; scored on the synthesized slices only (our protocol) it is lower.
    pair = thick_slices.thick_thin_pair(volume, 6, "decimate")
    assert pair.thick.shape[0] == 28 and pair.thin.shape[0] == 163  # slices 0, 6, ..., 162 observed
    up = thick_slices.upsample_linear_z(pair.thick, 6, n_thin=163)
    ref = windows.to_unit(pair.thin.array, windows.FULL)
    pred = windows.to_unit(up.array, windows.FULL)
    psnr_synth = _psnr_unit(pred[pair.synthesized], ref[pair.synthesized])
    psnr_all = _psnr_unit(pred, ref)
    assert psnr_synth == pytest.approx(28.2, abs=1.5)
    assert psnr_all == pytest.approx(28.2, abs=0.5)
    assert psnr_all > psnr_synth
    cubic = windows.to_unit(thick_slices.upsample_cubic_z(pair.thick, 6, n_thin=163).array, windows.FULL)
    assert abs(_psnr_unit(cubic[pair.synthesized], ref[pair.synthesized]) - psnr_synth) < 1.5


def test_odd_slab_wider_than_factor_marks_only_slices_inside_the_crop():
    volume = Volume(np.arange(20, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32),
                    spacing=(1.0, 1.0, 1.0))
    pair = thick_slices.thick_thin_pair(volume, 2, slab=5)
    assert pair.observed.shape == (pair.thin.shape[0],)
    assert pair.observed.sum() == np.sum(pair.thin_index_of_thick < pair.thin.shape[0])
