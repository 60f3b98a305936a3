"""Datasets over a fake preprocessing run: splits, slice and pair-patch samples, slabs,
linear baseline, LRU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctlib import paths
from ctlib.data import cache, phantom, splits, windows
from ctlib.errors import CTInputError
from ctlib.studies.interp import datasets, thick_slices
from ctlib.train.streams import BatchStream

WIDE = windows.HUWindow("wide", 0.0, 10000.0)  # no clipping: normalization commutes with slab means
SPLITS = {"p0": "train", "p1": "train", "p2": "train", "p3": "validation", "p4": "test"}
DEPTHS = {"p0": 14, "p1": 9, "p2": 20, "p3": 12, "p4": 10}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A preprocessing run: five phantom patients (one refused), a manifest with splits."""
    root = tmp_path_factory.mktemp("preprocess_run")
    rows = []
    for i, (patient, split) in enumerate(SPLITS.items()):
        volume = phantom.ct_phantom(shape=(DEPTHS[patient], 32, 40), seed=i)
        file = cache.save_volume(volume, root / "cache" / "volumes" / f"{patient}.npz")
        rows.append({"volume_id": patient, "patient_id": patient, "status": "cached",
                     "cache_file": file.relative_to(root / "cache").as_posix(), "split": split})
    rows.append(
        {"volume_id": "broken", "patient_id": "p9", "status": "refused", "cache_file": "", "split": ""}
    )
    splits.save_manifest(root / "cache" / "manifest.csv", rows)
    return root


def test_load_split_by_folder_and_by_run_id(run_dir):
    train = datasets.load_split(run_dir, "train")
    assert [v for v, _ in train] == ["p0", "p1", "p2"]
    assert all(p.is_file() and p.parent == run_dir / "cache" / "volumes" for _, p in train)
    # registered as a completed run in $CTLIB_RUNS_DIR, it is found by id
    run = paths.runs_dir() / "20261123-000000_preprocess_abcd"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "completed"}))
    (run / "cache").symlink_to(run_dir / "cache")
    assert [v for v, _ in datasets.load_split(run.name, "test")] == ["p4"]
    with pytest.raises(ValueError, match=r"no cached volumes in split 'holdout'.*'train'"):
        datasets.load_split(run_dir, "holdout")
    with pytest.raises(FileNotFoundError, match="not found"):
        datasets.load_split("no_such_run", "train")


def test_missing_cache_file_is_reported(tmp_path, run_dir):
    rows = [
        {
            "volume_id": "x",
            "patient_id": "x",
            "status": "cached",
            "cache_file": "volumes/x.npz",
            "split": "train",
        }
    ]
    splits.save_manifest(tmp_path / "cache" / "manifest.csv", rows)
    with pytest.raises(CTInputError, match="missing"):
        datasets.load_split(tmp_path, "train")
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(CTInputError, match="not a ctlib cache file"):
        datasets.cached_shape(tmp_path / "bad.npz")


def test_slice_dataset_whole_slices(run_dir):
    volumes = datasets.load_split(run_dir, "train")
    data = datasets.SliceDataset(volumes, window="full")
    assert len(data) == 14 + 9 + 20 and data.groups == [14, 9, 20]
    assert data.normalization == windows.normalization_record("full")
    image = data[14 + 3]  # slice 3 of p1
    assert image.shape == (1, 32, 40) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    expected = windows.normalize(cache.load_volume(volumes[1][1]).array[3], "full")
    torch.testing.assert_close(image[0], torch.from_numpy(expected))


def test_slice_dataset_patches_and_padding(run_dir):
    volumes = datasets.load_split(run_dir, "train")
    data = datasets.SliceDataset(volumes, window="lung", patch_size=16, seed=3)
    patch = data.sample(5, np.random.default_rng(0))
    assert patch.shape == (1, 16, 16)
    torch.testing.assert_close(patch, data.sample(5, np.random.default_rng(0)))
    full = datasets.SliceDataset(volumes, window="lung")[5][0].numpy()
    hits = [
        (y, x)
        for y in range(17)
        for x in range(25)
        if np.array_equal(full[y : y + 16, x : x + 16], patch[0].numpy())
    ]
    assert len(hits) == 1
    padded = datasets.SliceDataset(volumes, patch_size=(48, 40))[0]
    assert padded.shape == (1, 48, 40) and torch.all(padded[0, :8] == -1) and torch.all(padded[0, -8:] == -1)


def test_splits_are_respected(run_dir):
    train_ids = {v for v, _ in datasets.load_split(run_dir, "train")}
    for split in ("validation", "test"):
        data = datasets.SliceDataset(datasets.load_split(run_dir, split))
        assert not set(data.volume_ids) & train_ids
        assert all(SPLITS[v] == split for v in data.volume_ids)


def test_lru_and_locality_bound_volume_loads(run_dir):
    data = datasets.SliceDataset(datasets.load_split(run_dir, "train"), patch_size=8, lru_size=1)
    stream = BatchStream(data, batch_size=4, seed=0)
    for _ in range(len(data) // 4):
        next(stream)
    assert data.lru.loads <= 4  # one load per volume (and at most one reload at the epoch edge)


@pytest.mark.parametrize("factor,depth", [(2, 4), (3, 6), (4, 8)])
def test_pair_patches_slab_and_grids(run_dir, factor, depth):
    volumes = datasets.load_split(run_dir, "train")
    data = datasets.PairPatchDataset(volumes, factor=factor, depth=depth, window=WIDE)
    for index in range(len(data)):
        item = data[index]
        v, f, nb = item["volume_index"], factor, depth // factor
        assert item["thin"].shape == (1, depth, 32, 40) and item["thick"].shape == (1, nb, 32, 40)
        assert item["z0"] % factor == 0
        thin, thick = item["thin"][0], item["thick"][0]
        slab_means = thin.reshape(nb, f, 32, 40).mean(dim=1)
        torch.testing.assert_close(thick, slab_means, atol=1e-6, rtol=0)
        assert torch.equal(item["thick_on_thin_grid"][0], thick.repeat_interleave(f, dim=0))
        # linear equals the crop of the whole volume's linear interpolation (same grid, same context)
        volume = cache.load_volume(data.paths[v])
        pair = thick_slices.thick_thin_pair(volume, factor)
        linear = thick_slices.upsample_z(pair.thick, factor, "linear", n_thin=pair.thin.shape[0]).array
        z0 = item["z0"]
        expected = windows.normalize(linear[z0 : z0 + depth], WIDE)
        torch.testing.assert_close(item["linear"][0], torch.from_numpy(expected), atol=1e-6, rtol=0)
        torch.testing.assert_close(
            thin, torch.from_numpy(windows.normalize(pair.thin.array[z0 : z0 + depth], WIDE))
        )


def test_pair_patches_crop_decimate_and_batches(run_dir):
    volumes = datasets.load_split(run_dir, "train")
    data = datasets.PairPatchDataset(
        volumes, factor=2, depth=6, patch_size=(16, 24), mode="decimate", window="full"
    )
    item = data.sample(3, np.random.default_rng(1))
    assert item["thin"].shape == (1, 6, 16, 24) and item["linear"].shape == (1, 6, 16, 24)
    assert torch.equal(item["thick"][0], item["thin"][0, ::2])
    for key in ("thin", "thick", "linear", "thick_on_thin_grid"):
        assert item[key].min() >= -1 and item[key].max() <= 1
    batch = next(BatchStream(data, batch_size=3, seed=0))
    assert batch["thin"].shape == (3, 1, 6, 16, 24) and batch["z0"].shape == (3,)


def test_pair_patches_refusals(run_dir):
    volumes = datasets.load_split(run_dir, "train")
    with pytest.raises(ValueError, match="multiple of factor"):
        datasets.PairPatchDataset(volumes, factor=4, depth=6)
    with pytest.warns(UserWarning, match=r"p1 \(9 slices\)"):
        data = datasets.PairPatchDataset(volumes, factor=4, depth=12)
    assert data.volume_ids == ["p0", "p2"]
    with pytest.raises(ValueError, match="no volume"), pytest.warns(UserWarning, match="too short"):
        datasets.PairPatchDataset(volumes, factor=4, depth=40)


@pytest.mark.parametrize("slab", [1, 3, 5, 6])
def test_pair_patches_with_gaps_or_overlapping_slabs(run_dir, slab):
    volumes = datasets.load_split(run_dir, "train")[2:]  # p2, 20 slices
    data = datasets.PairPatchDataset(volumes, factor=2, depth=4, window=WIDE, slab=slab)
    volume = cache.load_volume(data.paths[0])
    # simulate_thick, not thick_thin_pair: the pair's `observed` mask overflows for odd slab > factor
    thick = thick_slices.simulate_thick(volume, 2, slab=slab)
    n_blocks = min(thick.shape[0], volume.shape[0] // 2)
    linear = thick_slices.upsample_z(
        thick.with_array(thick.array[:n_blocks]), 2, "linear", n_thin=2 * n_blocks
    ).array
    assert len(data) == n_blocks - 1
    for index in range(len(data)):
        item, z0 = data[index], 2 * index
        expected_thick = windows.normalize(thick.array[index : index + 2], WIDE)
        torch.testing.assert_close(item["thick"][0], torch.from_numpy(expected_thick), atol=1e-6, rtol=0)
        expected_linear = windows.normalize(linear[z0 : z0 + 4], WIDE)
        torch.testing.assert_close(item["linear"][0], torch.from_numpy(expected_linear), atol=1e-6, rtol=0)


def test_regressor_trains_on_pair_patches(run_dir, tmp_path):
    from ctlib.models import regressor
    from ctlib.train import loop

    data = datasets.PairPatchDataset(
        datasets.load_split(run_dir, "train")[2:], factor=2, depth=16, patch_size=32
    )
    torch.manual_seed(0)
    model = regressor.build_regressor(regressor.RegressorConfig(features=(4, 4, 4, 4, 4, 4)))
    config = loop.TrainConfig(steps=2, batch_size=1, lr=1e-3, log_every=1, device="cpu")
    history = loop.train(model, regressor.regressor_loss, loop.batch_stream(data, config), config,
                         checkpoint_path=tmp_path / "reg.pt", normalization=data.normalization)
    # starts as linear interpolation
    assert history[0]["l1"] == pytest.approx(history[0]["linear_l1"], rel=1e-5)
