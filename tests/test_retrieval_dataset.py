"""Retrieval split files: uint8 windowing (LPS, body crop, resize), the split file round trip and its
errors, atomic writes, and ``preprocess.write_splits`` on a few phantom cases."""

from __future__ import annotations

import numpy as np
import pytest

from ctlib.data import phantom
from ctlib.io.volume import Volume
from ctlib.studies.retrieval import dataset, preprocess
from ctlib.studies.retrieval import labels as labels_mod
from ctlib.studies.retrieval.sources import Case

WINDOW = (-1000.0, 1000.0)


def constant(hu: float, shape=(9, 12, 15), spacing=(2.0, 1.0, 1.0)) -> Volume:
    return Volume(np.full(shape, hu, np.float32), spacing)


# ------------------------------------------------------------------------------------------- windowing
@pytest.mark.parametrize("hu", [-400.0, 0.0, 40.0, 333.0, 999.0])
def test_to_uint8_maps_the_window_linearly(hu):
    out = dataset.to_uint8(constant(hu), (4, 6, 8), WINDOW)
    assert out.dtype == np.uint8 and out.shape == (4, 6, 8)
    expected = round((hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0]) * 255)
    assert np.all(out == expected), (np.unique(out), expected)
    back = dataset.uint8_to_hu(out, WINDOW)
    assert back.dtype == np.float32 and np.all(np.abs(back - hu) <= (WINDOW[1] - WINDOW[0]) / 255 / 2 + 1e-3)


def test_to_uint8_clips_to_the_window_and_refuses_an_empty_window():
    assert np.all(dataset.to_uint8(constant(3000.0), (3, 3, 3), (-100.0, 200.0)) == 255)
    assert np.all(dataset.to_uint8(constant(-450.0), (3, 3, 3), (-100.0, 200.0)) == 0)
    with pytest.raises(ValueError, match="high > low"):
        dataset.to_uint8(constant(0.0), (3, 3, 3), (100.0, 100.0))


def test_uint8_to_hu_inverts_the_mapping_within_half_a_level():
    ends = dataset.uint8_to_hu(np.array([0, 255], np.uint8), (-160.0, 240.0))
    np.testing.assert_allclose(ends, [-160, 240])
    hu = np.linspace(-160, 240, 1001)
    values = np.round((hu + 160) / 400 * 255).astype(np.uint8)
    assert np.abs(dataset.uint8_to_hu(values, (-160.0, 240.0)) - hu).max() <= 400 / 255 / 2 + 1e-4


@pytest.mark.parametrize(
    ("shape", "target"), [((27, 45, 33), (8, 16, 12)), ((17, 23, 31), (5, 7, 9)), ((7, 10, 9), (16, 16, 20))]
)
def test_resize_gives_the_exact_shape_for_odd_factors(shape, target):
    ramp = np.linspace(-500, 500, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    out = dataset.resize(ramp, target)
    assert out.shape == target and out.dtype == np.float32
    assert -500 - 1e-3 <= out.min() and out.max() <= 500 + 1e-3 and out[0, 0, 0] < out[-1, -1, -1]
    assert dataset.to_uint8(Volume(ramp + 600.0, (1.0, 1.0, 1.0)), target, WINDOW).shape == target
    np.testing.assert_allclose(dataset.resize(np.full(shape, 7.0, np.float32), target), 7.0, atol=1e-4)


def test_resize_smooths_before_downsampling():
    """Gaussian anti-aliasing: a pattern at the input's Nyquist frequency does not alias into the output."""
    stripes = np.where(np.arange(30) % 2 == 0, 500.0, -500.0).astype(np.float32) * np.ones((12, 12, 1))
    out = dataset.resize(stripes, (4, 4, 10))  # factor 3 along x
    assert np.abs(out).max() < 50, np.abs(out).max()


def test_to_uint8_crops_to_the_body_with_a_margin():
    hu = np.full((20, 40, 40), -1000.0, np.float32)
    hu[5:15, 10:30, 12:28] = 40.0  # the body
    hu[0, 0, 0] = 500.0  # a single bright voxel in the air: not the largest component
    out = dataset.to_uint8(Volume(hu, (2.0, 1.0, 1.0)), (14, 24, 20), WINDOW)  # box + 2 voxels per side
    expected = np.zeros((14, 24, 20), np.uint8)
    expected[2:-2, 2:-2, 2:-2] = round(1040 / 2000 * 255)
    np.testing.assert_array_equal(out, expected)
    assert dataset.body_box(hu, margin=0) == (slice(5, 15), slice(10, 30), slice(12, 28))
    assert dataset.body_box(np.full((3, 4, 5), -1000.0)) == (slice(0, 3), slice(0, 4), slice(0, 5))


def test_to_uint8_reorients_to_lps():
    ramp = np.broadcast_to(np.linspace(0, 500, 10, dtype=np.float32), (6, 8, 10)).copy()  # along x
    lps = dataset.to_uint8(Volume(ramp, (1.0, 1.0, 1.0)), (6, 8, 10), WINDOW)
    flipped = Volume(ramp, (1.0, 1.0, 1.0), direction=np.diag([-1.0, 1.0, 1.0]))  # x index to the right
    out = dataset.to_uint8(flipped, (6, 8, 10), WINDOW)
    assert lps[0, 0, 0] < lps[0, 0, -1]
    np.testing.assert_array_equal(out, lps[..., ::-1])


# ------------------------------------------------------------------------------------------- split files
def split_arrays(n: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "volumes": rng.integers(0, 256, (n, 4, 6, 5), dtype=np.uint8),
        "labels": (rng.random((n, 3)) < 0.5).astype(np.uint8),
        "label_names": ["a", "b", "c"],
        "case_ids": [f"case_{i}" for i in range(n)],
        "patient_ids": [f"pt_{i // 2}" for i in range(n)],
        "sources": ["openkbp"] * (n - 1) + ["lidc"],
        "window_hu": (-1000.0, 600.0),
    }


def test_split_file_round_trip(tmp_path):
    arrays = split_arrays()
    path = dataset.write_split(tmp_path / "train.npz", **arrays)
    split = dataset.RetrievalSplit.load(path)
    assert split.path == path and len(split) == 5 and split.input_shape == (4, 6, 5)
    np.testing.assert_array_equal(split.volumes, arrays["volumes"])
    np.testing.assert_array_equal(split.labels, arrays["labels"])
    assert split.volumes.dtype == np.uint8 and split.labels.dtype == np.uint8
    for key in ("label_names", "case_ids", "patient_ids", "sources"):
        assert getattr(split, key) == arrays[key], key
        assert all(type(v) is str for v in getattr(split, key)), key
    assert split.window_hu == (-1000.0, 600.0) and all(type(w) is float for w in split.window_hu)


def test_subset_keeps_the_rows_in_the_given_order(tmp_path):
    arrays = split_arrays()
    split = dataset.RetrievalSplit.load(dataset.write_split(tmp_path / "train.npz", **arrays))
    sub = split.subset([3, 0])
    assert len(sub) == 2 and sub.case_ids == ["case_3", "case_0"] and sub.patient_ids == ["pt_1", "pt_0"]
    np.testing.assert_array_equal(sub.volumes, arrays["volumes"][[3, 0]])
    np.testing.assert_array_equal(sub.labels, arrays["labels"][[3, 0]])
    assert sub.sources == ["openkbp", "openkbp"] and split.subset([4]).sources == ["lidc"]
    assert sub.path == split.path and sub.window_hu == split.window_hu
    assert sub.label_names == split.label_names
    assert len(split.subset([])) == 0 and len(split) == 5


def test_write_split_refuses_inconsistent_arrays(tmp_path):
    arrays = split_arrays()
    with pytest.raises(ValueError, match=r"bad\.npz: volumes must be uint8"):
        dataset.write_split(tmp_path / "bad.npz", **{**arrays, "volumes": arrays["volumes"].astype(np.int16)})
    with pytest.raises(ValueError, match=r"bad\.npz: volumes must be uint8 \(N, D, H, W\) with N = 4"):
        dataset.write_split(tmp_path / "bad.npz", **{**arrays, "case_ids": arrays["case_ids"][:4]})
    with pytest.raises(ValueError, match=r"bad\.npz: labels \(5, 3\), 5 patients, 4 sources"):
        dataset.write_split(tmp_path / "bad.npz", **{**arrays, "sources": arrays["sources"][:4]})
    with pytest.raises(ValueError, match=r"for 5 cases and 2 label names"):
        dataset.write_split(tmp_path / "bad.npz", **{**arrays, "label_names": ["a", "b"]})
    assert not (tmp_path / "bad.npz").exists()


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.npz: no such retrieval split file"):
        dataset.RetrievalSplit.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", ct=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz: not a retrieval split file \(missing \['volumes'"):
        dataset.RetrievalSplit.load(tmp_path / "other.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip archive at all")
    with pytest.raises(ValueError, match=r"garbage\.npz: unreadable retrieval split file"):
        dataset.RetrievalSplit.load(tmp_path / "garbage.npz")
    with open(tmp_path / "array.npz", "wb") as handle:  # one .npy array under an .npz name
        np.save(handle, np.zeros(3))
    with pytest.raises(ValueError, match=r"array\.npz: unreadable retrieval split file"):
        dataset.RetrievalSplit.load(tmp_path / "array.npz")
    good = dataset.write_split(tmp_path / "good.npz", **split_arrays())
    (tmp_path / "truncated.npz").write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"truncated\.npz: unreadable retrieval split file"):
        dataset.RetrievalSplit.load(tmp_path / "truncated.npz")


@pytest.mark.parametrize(
    "change",
    [{"case_ids": np.array(["a", "b"])}, {"labels": np.zeros((4, 3), np.uint8)},
     {"volumes": np.zeros((5, 4, 6, 5), np.float32)}, {"sources": np.array(["x"])},
     {"patient_ids": np.array(["p"] * 6)}, {"label_names": np.array(["a"])}],
    ids=["case_ids", "labels", "volume_type", "sources", "patient_ids", "label_names"],
)  # fmt: skip
def test_load_refuses_counts_that_disagree(tmp_path, change):
    arrays = {k: np.asarray(v) for k, v in split_arrays().items()}
    np.savez(tmp_path / "odd.npz", **{**arrays, **change})
    with pytest.raises(ValueError, match=r"odd\.npz: .*disagree"):
        dataset.RetrievalSplit.load(tmp_path / "odd.npz")


def test_write_split_is_atomic(tmp_path, monkeypatch):
    """A write that fails half way leaves the old file intact and no temporary behind."""
    path = dataset.write_split(tmp_path / "train.npz", **split_arrays(seed=0))
    before = path.read_bytes()
    calls = []

    def failing_savez(handle, **arrays):
        calls.append(handle)
        handle.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(dataset.np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        dataset.write_split(path, **split_arrays(seed=1))
    assert calls and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.npz"]
    monkeypatch.undo()
    dataset.write_split(path, **split_arrays(seed=1))  # a later write replaces it
    np.testing.assert_array_equal(dataset.RetrievalSplit.load(path).volumes, split_arrays(seed=1)["volumes"])


# ------------------------------------------------------------------------------------------- preprocess
def test_vocabulary_keeps_labels_between_min_count_and_max_fraction():
    sets = [{"a", "b", "common"}, {"b", "common"}, {"c", "common"}, {"b", "common"}]
    assert labels_mod.vocabulary(sets, min_count=2, max_fraction=0.95) == ["b"]
    assert labels_mod.vocabulary(sets, min_count=1, max_fraction=1.0) == ["a", "b", "c", "common"]
    assert labels_mod.vocabulary(sets, min_count=1, max_fraction=0.75) == ["a", "b", "c"]
    assert labels_mod.vocabulary([], min_count=1) == []


def test_write_splits_on_phantom_cases(tmp_path):
    def case(i, patient, labels):
        volume = phantom.ct_phantom(shape=(8, 16, 16), seed=i)
        return Case(f"case{i}", patient, "phantom", labels, lambda volume=volume: volume)

    cases = [case(0, "p0", {"a", "b"}), case(1, "p0", {"a"}), case(2, "p1", {"a", "c"}), case(3, "p2", {"b"}),
             case(4, "p3", {"a", "d"})]  # fmt: skip
    split_of = {"p0": "train", "p1": "train", "p2": "validation", "p3": "test"}
    rows, names = preprocess.write_splits(cases, split_of, tmp_path, input_shape=(4, 8, 8), window_hu=WINDOW,
                                          min_count=1, max_fraction=0.9)  # fmt: skip
    assert names == ["b", "c"]  # fitted on train only: "a" is in all 3 training cases, "d" in none
    train = dataset.RetrievalSplit.load(tmp_path / "train.npz")
    assert train.case_ids == ["case0", "case1", "case2"] and train.input_shape == (4, 8, 8)
    np.testing.assert_array_equal(train.labels, [[1, 0], [0, 0], [0, 1]])
    np.testing.assert_array_equal(train.volumes[2], dataset.to_uint8(cases[2].read(), (4, 8, 8), WINDOW))
    test = dataset.RetrievalSplit.load(tmp_path / "test.npz")
    assert test.case_ids == ["case4"] and test.labels.tolist() == [[0, 0]] and test.window_hu == WINDOW
    assert [r["labels_dropped"] for r in rows] == ["a", "a", "a", "", "a;d"]
    assert [r["split"] for r in rows] == ["train", "train", "train", "validation", "test"]
    assert (tmp_path / "manifest.csv").is_file()
    with pytest.raises(ValueError, match=r"patients without a split: \['p3'\]"):
        preprocess.write_splits(cases, {"p0": "train", "p1": "train", "p2": "test"}, tmp_path / "x",
                                input_shape=(4, 8, 8), window_hu=WINDOW)  # fmt: skip
