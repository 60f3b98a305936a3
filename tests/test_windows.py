"""Named HU windows and window normalization (numpy and torch, closed forms)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctlib.data import windows


def test_presets_have_documented_bounds():
    assert (windows.FULL.low, windows.FULL.high) == (-1024.0, 3071.0)
    assert (windows.LUNG.low, windows.LUNG.high) == (-1350.0, 150.0)
    assert (windows.MEDIASTINUM.level, windows.MEDIASTINUM.width) == (40.0, 400.0)
    assert (windows.SOFT_TISSUE.level, windows.SOFT_TISSUE.width) == (50.0, 350.0)
    assert (windows.BONE.low, windows.BONE.high) == (-500.0, 1300.0)
    assert (windows.BRAIN.low, windows.BRAIN.high) == (0.0, 80.0)
    assert set(windows.WINDOWS) == {"lung", "mediastinum", "soft_tissue", "bone", "brain", "full"}


def test_get_window_by_name_and_error_lists_names():
    assert windows.get_window("Soft-Tissue") is windows.SOFT_TISSUE
    assert windows.get_window(windows.BONE) is windows.BONE
    with pytest.raises(ValueError, match="lung") as err:
        windows.get_window("abdomen")
    assert "abdomen" in str(err.value)


def test_window_is_frozen_and_validated():
    with pytest.raises(AttributeError):
        windows.LUNG.level = 0.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="positive width"):
        windows.HUWindow("bad", 0.0, 0.0)


@pytest.mark.parametrize("name", sorted(windows.WINDOWS))
def test_round_trip_inside_window(name):
    w = windows.WINDOWS[name]
    hu = np.linspace(w.low, w.high, 101)
    x = windows.normalize(hu, w)
    assert x.min() == pytest.approx(-1.0) and x.max() == pytest.approx(1.0)
    np.testing.assert_allclose(windows.denormalize(x, w), hu, rtol=0, atol=1e-9 * w.width + 1e-9)
    np.testing.assert_allclose(windows.to_unit(hu, w), (hu - w.low) / w.width, atol=1e-12)
    np.testing.assert_allclose(windows.from_unit(windows.to_unit(hu, w), w), hu, atol=1e-9 * w.width)


def test_clipping_outside_window_and_closed_form():
    w = windows.MEDIASTINUM  # [-160, 240]
    hu = np.array([-3000.0, -160.0, 40.0, 240.0, 5000.0])
    np.testing.assert_allclose(windows.normalize(hu, w), [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(windows.to_unit(hu, w), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-12)
    assert windows.denormalize(np.array([1.5]), w)[0] == pytest.approx(340.0)  # extrapolates
    assert windows.denormalize(np.array([1.5]), w, clip=True)[0] == pytest.approx(240.0)


def test_numpy_and_torch_agree_and_keep_types():
    rng = np.random.default_rng(0)
    hu = rng.uniform(-2000, 4000, size=(2, 3, 4)).astype(np.float32)
    for w in windows.WINDOWS.values():
        for fn in (windows.normalize, windows.to_unit):
            a = fn(hu, w)
            t = fn(torch.from_numpy(hu), w)
            assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
            assert a.dtype == np.float32
            np.testing.assert_allclose(t.numpy(), a, rtol=1e-6, atol=1e-6)
        x = windows.normalize(hu, w)
        np.testing.assert_allclose(windows.denormalize(torch.from_numpy(x), w).numpy(),
                                   windows.denormalize(x, w), rtol=1e-6, atol=1e-3)
    ints = windows.normalize(np.array([-1024, 3071], dtype=np.int16), windows.FULL)
    assert ints.dtype == np.float32 and list(ints) == [-1.0, 1.0]
    assert windows.to_unit(torch.tensor([-1024, 3071]), "full").dtype == torch.float32


def test_normalization_record_round_trip_through_json():
    for w in windows.WINDOWS.values():
        record = json.loads(json.dumps(windows.normalization_record(w)))
        assert windows.window_from_record(record) == w
    custom = windows.HUWindow("custom", 10.0, 20.0)
    assert windows.window_from_record(windows.normalization_record(custom)) == custom


def test_window_from_record_rejects_bad_records():
    record = windows.normalization_record(windows.LUNG)
    with pytest.raises(ValueError, match="kind"):
        windows.window_from_record({**record, "kind": "zscore"})
    with pytest.raises(ValueError, match="inconsistent"):
        windows.window_from_record({**record, "low_hu": -1000.0})
    with pytest.raises(ValueError, match="lacks"):
        windows.window_from_record({"kind": record["kind"], "name": "lung"})


# The tests below kill mutants that survived `make mutation` (bench/results/mutation.md).
@pytest.mark.parametrize(
    ("level", "width"), [(float("nan"), 100.0), (0.0, float("inf")), (float("-inf"), 1.0), (0.0, -5.0)]
)
def test_window_refuses_non_finite_or_non_positive_numbers(level, width):
    with pytest.raises(ValueError, match="finite level and a positive width"):
        windows.HUWindow("bad", level, width)


def test_narrow_windows_and_name_spellings_are_accepted():
    assert windows.HUWindow("narrow", 0.0, 0.5).high == 0.25
    assert windows.get_window(" Soft Tissue ") is windows.SOFT_TISSUE


def test_float_inputs_keep_their_precision():
    for dtype in (np.float64, np.float16):
        assert windows.normalize(np.zeros(3, dtype=dtype), "full").dtype == dtype
    assert windows.to_unit(torch.zeros(3, dtype=torch.float64), "full").dtype == torch.float64
    assert windows.from_unit(np.array([0.5]), "full").dtype == np.float64


def test_denormalize_clip_bounds_both_sides():
    w = windows.MEDIASTINUM  # [-160, 240]
    np.testing.assert_allclose(
        windows.denormalize(np.array([-1.5, 0.0, 1.5]), w, clip=True), [-160.0, 40.0, 240.0]
    )
    np.testing.assert_allclose(
        windows.denormalize(torch.tensor([-1.5, 1.5]), w, clip=True).numpy(), [-160.0, 240.0]
    )


def test_normalization_record_names_every_field():
    assert windows.normalization_record(windows.MEDIASTINUM) == {
        "kind": "hu_window_linear", "name": "mediastinum", "level_hu": 40.0, "width_hu": 400.0,
        "low_hu": -160.0, "high_hu": 240.0, "output_range": [-1.0, 1.0]}


def test_window_from_record_checks_high_output_range_and_type():
    record = windows.normalization_record(windows.LUNG)
    with pytest.raises(ValueError, match="high_hu"):
        windows.window_from_record({**record, "high_hu": 151.0})
    with pytest.raises(ValueError, match=r"output_range must be \[-1, 1\], got \[0.0, 1.0\]"):
        windows.window_from_record({**record, "output_range": [0.0, 1.0]})
    with pytest.raises(ValueError, match="found 'list'"):
        windows.window_from_record([record])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="found 'zscore'"):
        windows.window_from_record({**record, "kind": "zscore"})
    # low/high within a rounding error are accepted; a record without them or output_range still loads
    brain = windows.normalization_record(windows.BRAIN)  # low 0 HU: only the absolute tolerance applies
    assert windows.window_from_record({**brain, "low_hu": 5e-7}) == windows.BRAIN
    bare = {k: record[k] for k in ("kind", "name", "level_hu", "width_hu")}
    assert windows.window_from_record(bare) == windows.LUNG
