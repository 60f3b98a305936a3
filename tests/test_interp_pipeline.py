"""Full-volume latent-diffusion interpolation: loading a run, thin-grid geometry, z-window blending,
seeding, K-sample statistics, data consistency and bounded VAE calls (tiny random models, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ctlib import checkpoint as checkpoint_io
from ctlib import paths
from ctlib.data import phantom, windows
from ctlib.diffusion.ema import EMA
from ctlib.errors import CTInputError
from ctlib.models import latent_unet
from ctlib.models import vae as vae_module
from ctlib.studies.interp import bundle, latent_diffusion, pipeline, thick_slices
from ctlib.studies.interp import scoring as interpolation

TINY_VAE = vae_module.VAEConfig(channels=(8, 8, 8, 8), num_res_blocks=1, norm_num_groups=4)
TINY_UNET = latent_unet.LatentUNetConfig(channels=(8, 8), attention_levels=(False, False), num_res_blocks=1,
                                         norm_num_groups=4, num_head_channels=8)


# ------------------------------------------------------------------------------ fake runs
def fake_run(run_id: str, stem: str) -> object:
    """A completed run folder under $CTLIB_RUNS_DIR (what ``runs.run_dir_of`` needs)."""
    run_dir = paths.runs_dir() / run_id
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "run.json").write_text(
        json.dumps({"run_id": run_id, "status": "completed", "notebook_stem": stem})
    )
    return run_dir


def make_diffusion_run(
    factor: int = 4, *, seed: int = 0, ema: bool = True, run_id: str = "diffusion_run",
    spec: latent_diffusion.InterpDiffusionSpec | None = None, regressor_run_id: str | None = None,
) -> str:
    """A VAE run and a diffusion run holding tiny random models, following the checkpoint contract
    (``spec`` default: the plain model at ``factor``; ``regressor_run_id`` goes into ``extra``)."""
    torch.manual_seed(seed)
    record = windows.normalization_record(windows.FULL)
    vae = vae_module.build_vae(TINY_VAE)
    vae_dir = fake_run(f"{run_id}_vae", "2026-11-23_02_vae")
    checkpoint_io.save_checkpoint(vae_dir / "checkpoints" / "vae.pt", model_state=vae.state_dict(),
                                  config={"model": TINY_VAE.to_dict()}, normalization=record,
                                  extra={"scale_factor": 0.8}, rng_state=False)
    spec = spec or latent_diffusion.InterpDiffusionSpec(factor=factor)
    module = latent_diffusion.LatentDiffusionLoss(
        latent_unet.build_latent_unet(TINY_UNET), vae, scale_factor=0.8, spec=spec, depth_multiple=2
    )
    averaged = EMA(module, decay=0.5)
    with torch.no_grad():  # one "training step" so the EMA and the raw weights differ
        for p in module.parameters():
            p.add_(0.01)
    averaged.update(module)
    run_dir = fake_run(run_id, "2026-11-23_03_diffusion")
    checkpoint_io.save_checkpoint(
        run_dir / "checkpoints" / "diffusion.pt", model_state=module.state_dict(),
        config={"model": {"unet": TINY_UNET.to_dict(), "spec": spec.to_dict()}}, normalization=record,
        extra={"vae_run_id": vae_dir.name, "preprocess_run_id": "none", "scale_factor": 0.8,
               "regressor_run_id": regressor_run_id},
        ema_state=averaged.state_dict() if ema else None, rng_state=False)
    return run_id


def tiny_interpolator(factor: int = 4, seed: int = 0) -> bundle.Interpolator:
    torch.manual_seed(seed)
    return bundle.Interpolator(
        vae_module.build_vae(TINY_VAE),
        latent_unet.build_latent_unet(TINY_UNET),
        latent_diffusion.InterpDiffusionSpec(factor=factor),
        0.8,
        windows.FULL,
        2,
        "cpu",
    )


class LocalDenoiser(nn.Module):
    """A deterministic denoiser that acts on each voxel alone (1x1x1 conv): no context across z."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mix = nn.Conv3d(8, 4, kernel_size=1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.mix(x) * 0.5


def _thick(n_thick: int = 6, size: tuple[int, int] = (30, 36), factor: int = 4) -> thick_slices.ThickThinPair:
    volume = phantom.ct_phantom(shape=(n_thick * factor, *size), seed=0)
    return thick_slices.thick_thin_pair(volume, factor)


FAST = {"steps": 2, "progress": False}


# ------------------------------------------------------------------------------- loading
def test_load_interpolator_from_a_run_applies_the_ema():
    run_id = make_diffusion_run(factor=4)
    ema = bundle.load_interpolator(run_id, device="cpu")
    raw = bundle.load_interpolator(run_id, use_ema=False, device="cpu")
    assert ema.spec.factor == 4 and ema.scale_factor == pytest.approx(0.8) and ema.window == windows.FULL
    assert ema.depth_multiple == 2 and ema.vae_factor == 8 and ema.inplane_multiple == 16
    assert (ema.meta["weights"], raw.meta["weights"]) == ("ema", "model")
    ckpt = checkpoint_io.load_checkpoint(ema.meta["diffusion_checkpoint"])
    name = next(iter(ckpt["ema_state"]["shadow"]))
    key = name[len("unet."):]
    assert torch.equal(ema.unet.state_dict()[key], ckpt["ema_state"]["shadow"][name])
    assert torch.equal(raw.unet.state_dict()[key], ckpt["model_state"][name])
    assert not torch.equal(ema.unet.state_dict()[key], raw.unet.state_dict()[key])
    by_path = bundle.load_interpolator(
        ema.meta["diffusion_checkpoint"], vae_checkpoint=ema.meta["vae_checkpoint"], device="cpu"
    )
    assert torch.equal(by_path.unet.state_dict()[key], ema.unet.state_dict()[key])


def test_load_interpolator_refuses_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CTInputError, match="diffusion run 'nope'.*not found"):
        bundle.load_interpolator("nope")
    run_id = make_diffusion_run()
    checkpoint = paths.runs_dir() / run_id / "checkpoints" / "diffusion.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    with pytest.raises(CTInputError, match="not a readable checkpoint"):
        bundle.load_interpolator(run_id)
    with pytest.raises(CTInputError, match="no checkpoint file"):
        bundle.load_interpolator(tmp_path / "missing.pt")


# ------------------------------------------------------------------------ windows, blending
@pytest.mark.parametrize(
    "n, window, overlap", [(10, 16, 4), (40, 16, 4), (41, 16, 0), (100, 24, 6), (17, 16, 15)]
)
def test_windows_cover_the_grid_and_weights_sum_to_one(n, window, overlap):
    spans = pipeline.window_spans(n, window, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(stop - start == min(window, n) for start, stop in spans)
    for (_, stop), (start, _) in zip(spans, spans[1:], strict=False):
        assert stop - start >= overlap - 1  # rounding of evenly spread starts may lose one slice
    weights = pipeline.blend_weights(spans, n)
    total = np.zeros(n)
    constant = np.zeros(n)
    for (start, stop), w in zip(spans, weights, strict=True):
        assert np.all(w > 0)
        total[start:stop] += w
        constant[start:stop] += w * 7.0  # every window returns the same constant field
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    np.testing.assert_allclose(constant, 7.0, atol=1e-12)


def test_one_window_equals_overlapping_windows_for_a_local_model():
    pair = _thick(n_thick=6)
    interp = tiny_interpolator()
    interp.unet = LocalDenoiser().eval()
    one = pipeline.interpolate_volume(pair.thick, interp, window_depth=64, **FAST)
    many = pipeline.interpolate_volume(pair.thick, interp, window_depth=8, overlap=3, **FAST)
    assert len(one.windows) == 1 and len(many.windows) > 2
    np.testing.assert_allclose(many.mean.array, one.mean.array, atol=1e-2)


# --------------------------------------------------------------------------- thin geometry
def test_thin_grid_geometry_of_a_native_thick_volume():
    thick = phantom.ct_phantom(shape=(5, 30, 36), spacing_mm=(6.0, 1.5, 1.5), seed=0)
    result = pipeline.interpolate_volume(thick, tiny_interpolator(), factor=3, window_depth=8, **FAST)
    thin = result.mean
    assert thin.shape == (15, 30, 36) and thin.spacing == pytest.approx((2.0, 1.5, 1.5))
    assert thin.slice_thickness_mm == pytest.approx(2.0)
    # Thin slices are centred within each slab: block k's mean position is thick slice k's position.
    blocks = thin.slice_positions().reshape(5, 3, 3).mean(axis=1)
    np.testing.assert_allclose(blocks, thick.slice_positions(), atol=1e-9)
    # With an odd factor the middle thin slice of each block sits exactly at the thick position.
    np.testing.assert_allclose(thin.slice_positions()[1::3], thick.slice_positions(), atol=1e-9)


def test_output_lands_on_the_grid_of_a_simulated_pair():
    pair = _thick(n_thick=5, size=(20, 28))
    result = pipeline.interpolate_volume(pair.thick, tiny_interpolator(), **FAST)
    assert result.mean.shape == pair.thin.shape
    assert result.mean.origin == pytest.approx(pair.thin.origin)
    assert result.mean.spacing == pytest.approx(pair.thin.spacing)
    assert result.mean.spacing[0] == pytest.approx(pair.thick.spacing[0] / 4)


# ----------------------------------------------------------------------- seeds and samples
def test_same_seed_same_output_and_seeds_differ():
    pair = _thick(n_thick=4)
    interp = tiny_interpolator()
    a = pipeline.interpolate_volume(pair.thick, interp, eta=1.0, seed=3, **FAST)
    b = pipeline.interpolate_volume(pair.thick, interp, eta=1.0, seed=3, **FAST)
    c = pipeline.interpolate_volume(pair.thick, interp, eta=1.0, seed=4, **FAST)
    np.testing.assert_array_equal(a.mean.array, b.mean.array)
    assert np.abs(a.mean.array - c.mean.array).max() > 1.0


def test_two_samples_give_the_unbiased_std_of_the_draws():
    """Sample 0 of a K-sample run is the 1-sample run (same seed), so with K = 2 the draws are
    x0 = the 1-sample mean and x1 = 2 * mean - x0, whose unbiased std (ddof = 1) is |x0 - x1| / sqrt(2)."""
    pair = _thick(n_thick=4)
    interp = tiny_interpolator()
    one = pipeline.interpolate_volume(pair.thick, interp, samples=1, **FAST)
    two = pipeline.interpolate_volume(pair.thick, interp, samples=2, **FAST)
    assert one.std is None  # no spread from a single draw
    assert two.std.shape == two.mean.shape and two.std.spacing == two.mean.spacing
    x0 = one.mean.array.astype(np.float64)
    x1 = 2 * two.mean.array.astype(np.float64) - x0
    expected = np.std(np.stack([x0, x1]), axis=0, ddof=1)
    assert expected.max() > 1.0  # the draws differ: the check below is not 0 == 0
    np.testing.assert_allclose(two.std.array, expected, rtol=1e-4, atol=1e-2)


# ------------------------------------------------------------------------ data consistency
@pytest.mark.parametrize("mode", ["slab", "decimate"])
def test_data_consistency_reproduces_the_thick_slices(mode):
    volume = phantom.ct_phantom(shape=(24, 30, 36), seed=0)
    pair = thick_slices.thick_thin_pair(volume, 4, mode=mode)
    interp = tiny_interpolator()
    n_thin = pair.thin.shape[0]  # decimation: the grid ends at the last observed slice
    kept = pipeline.interpolate_volume(pair.thick, interp, data_consistency=True, return_raw=True,
                                       n_thin=n_thin, **FAST)
    free = pipeline.interpolate_volume(pair.thick, interp, data_consistency=False, n_thin=n_thin, **FAST)
    assert kept.mean.shape == pair.thin.shape
    assert kept.settings["consistency"] == mode
    assert kept.residual_before_hu > 10 and kept.residual_after_hu < 1.0
    assert (
        free.residual_after_hu == free.residual_before_hu == pytest.approx(kept.residual_before_hu, rel=1e-4)
    )
    np.testing.assert_allclose(kept.raw.array, free.mean.array, atol=1e-3)
    if mode == "decimate":
        np.testing.assert_allclose(kept.mean.array[pair.observed], pair.thick.array, atol=1e-2)
    else:
        means = kept.mean.array.reshape(pair.thick.shape[0], 4, *pair.thick.shape[1:]).mean(axis=1)
        np.testing.assert_allclose(means, pair.thick.array, atol=0.05)


def test_project_consistent_on_a_toy_grid():
    thin = np.arange(12, dtype=np.float32).reshape(6, 1, 2)
    thick = np.array([[[10.0, 20.0]], [[-5.0, 0.0]]], dtype=np.float32)
    blocks = pipeline._thick_blocks(6, 2, 3, 1.0, "slab", 3)
    assert [b.tolist() for b in blocks] == [[0, 1, 2], [3, 4, 5]]
    mask = np.ones_like(thick, dtype=bool)
    assert interpolation.mean_abs_residual_hu(pipeline.block_means(thin, blocks), thick, mask) > 0
    pipeline.project_consistent(thin, thick, blocks)
    np.testing.assert_allclose(pipeline.block_means(thin, blocks), thick, atol=1e-6)
    # the shape within a slab is kept: only a per-pixel shift
    np.testing.assert_allclose(np.diff(thin[:3, 0, 0]), [2.0, 2.0])


# ----------------------------------------------------------------------- bounded memory
def test_vae_calls_and_unet_inputs_are_bounded_by_chunk_and_window():
    pair = _thick(n_thick=10)  # 40 thin slices
    interp = tiny_interpolator()
    seen = {"encode": [], "decode": [], "unet_depth": []}
    encode, decode = interp.vae.encode, interp.vae.decode

    def spy_encode(x):
        seen["encode"].append(x.shape[0])
        return encode(x)

    def spy_decode(z):
        seen["decode"].append(z.shape[0])
        return decode(z)

    interp.vae.encode, interp.vae.decode = spy_encode, spy_decode
    interp.unet.register_forward_pre_hook(lambda module, args: seen["unet_depth"].append(args[0].shape[2]))
    pipeline.interpolate_volume(pair.thick, interp, window_depth=8, chunk=5, **FAST)
    assert sum(seen["encode"]) == sum(seen["decode"]) == 40
    assert max(seen["encode"]) <= 5 and max(seen["decode"]) <= 5
    assert max(seen["unet_depth"]) <= 8


def test_bf16_autocast_stays_close_to_float32():
    pair = _thick(n_thick=4)
    interp = tiny_interpolator()
    full = pipeline.interpolate_volume(pair.thick, interp, **FAST)
    half = pipeline.interpolate_volume(pair.thick, interp, bf16=True, **FAST)
    assert half.mean.array.dtype == np.float32 and np.isfinite(half.mean.array).all()
    assert half.settings["bf16"] and not full.settings["bf16"]
    assert np.median(np.abs(half.mean.array - full.mean.array)) < 50.0  # HU; bf16 keeps ~3 significant digits


def test_bad_arguments_are_refused():
    pair = _thick(n_thick=4)
    interp = tiny_interpolator()
    with pytest.raises(ValueError, match="factor must be an integer >= 2"):
        pipeline.interpolate_volume(pair.thick, interp, factor=1, **FAST)
    with pytest.raises(ValueError, match="at least 2 thick slices"):
        pipeline.interpolate_volume(pair.thick.with_array(pair.thick.array[:1]), interp, **FAST)
    with pytest.raises(ValueError, match="unknown sampler"):
        pipeline.interpolate_volume(pair.thick, interp, sampler="euler", **FAST)
