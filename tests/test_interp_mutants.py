"""Tests written to kill mutants that the rest of the suite let live (issue 12.6, mutation testing).

Each test names the mutant it kills; bench/results/mutation.md lists them with the tool run behind them.

1. DDIM's previous timestep taken as MONAI's ``t - T // N`` instead of the next entry of the list.
2. The held-out (and train) forcing of the split dropped, in ``make_splits`` or in the study's
   ``assign_splits`` / ``split_of_sources``.
3. Latents clamped to [-1, 1] (an image-space x0 clip) in the latent-diffusion pipeline.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from torch import nn

from ctlib.data import phantom, splits, windows
from ctlib.diffusion import samplers, schedules
from ctlib.diffusion.denoiser import Denoiser
from ctlib.diffusion.schedules import NoiseSchedule
from ctlib.models import vae as vae_module
from ctlib.studies.interp import bundle, latent_diffusion, pipeline, preprocess, thick_slices

# ---------------------------------------------------------------------------------------------
# 1. DDIM walks its own timestep list
# ---------------------------------------------------------------------------------------------
MU, SIGMA = -0.2, 0.7  # data: x0 ~ N(MU, SIGMA^2) per element


@dataclasses.dataclass(frozen=True)
class GaussianDenoiser:
    """The exact (posterior-mean) denoiser of Gaussian data, in the form the samplers call.

    With x_t = a x0 + s eps and x0 ~ N(MU, SIGMA^2): E[x0 | x_t] = MU + a SIGMA^2 (x_t - a MU) / (a^2 SIGMA^2
    + s^2); eps_hat = (x_t - a x0_hat) / s and v_hat = a eps_hat - s x0_hat follow linearly.
    """

    schedule: NoiseSchedule
    prediction: str

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = schedules.extract(self.schedule.alphas_cumprod, t, x_t.ndim)
        a, s = ab.sqrt(), (1.0 - ab).sqrt()
        x = x_t.double()
        x0 = MU + a * SIGMA**2 * (x - a * MU) / (a * a * SIGMA**2 + s * s)
        eps = (x - a * x0) / s
        out = {"x0": x0, "epsilon": eps, "v": a * eps - s * x0}[self.prediction]
        return out.to(x_t.dtype)

    def placement(self) -> tuple[torch.device, torch.dtype]:
        return torch.device("cpu"), torch.float32


def _explicit_chain(model: GaussianDenoiser, x_T: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    x = x_T.clone()
    for t, t_prev in pairs:
        out = model(x, torch.full((x.shape[0],), t, dtype=torch.long))
        x, _ = samplers.ddim_step(out, x, t, t_prev, model.schedule, prediction=model.prediction)
    return x


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_linspace_ddim_steps_to_the_next_entry_of_its_own_list(prediction):
    """Mutant: ``prevs = [max(t - T // N, -1) for t in ts]`` (MONAI 1.6 and diffusers, whose last step goes
    to alpha_bar = 1): moves the 10-step chain by about 0.2."""
    T, N = 1000, 10
    schedule = schedules.make_schedule("linear", num_train_timesteps=T)
    model = GaussianDenoiser(schedule, prediction)
    x_T = torch.randn(2, 1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    ts = samplers.ddim_timesteps(T, N, spacing="linspace").tolist()
    listed = list(zip(ts, ts[1:] + [-1], strict=True))
    monai = [(t, max(t - T // N, -1)) for t in ts]
    assert [p for _, p in listed] != [p for _, p in monai]  # the case tells the two rules apart ...
    expected = _explicit_chain(model, x_T, listed)
    assert (expected - _explicit_chain(model, x_T, monai)).abs().max() > 0.05  # ... by far more than rounding

    seen: list[int] = []
    ours = samplers.ddim(model, tuple(x_T.shape), num_steps=N, x_T=x_T, spacing="linspace",
                         callback=lambda i, t, x, x0: seen.append(t))
    assert seen == ts
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 2. Held-out (and train) forcing of the split
# ---------------------------------------------------------------------------------------------
FRACTIONS = {"train": 0.7, "validation": 0.15, "test": 0.15}
PATIENTS = [f"pt{i:02d}" for i in range(10)]


def _hash_assigns(split: str, fixed_to: str) -> tuple[int, str]:
    """The first (seed, patient) whose unforced seeded-hash split is ``split`` and which a forcing to
    ``fixed_to`` would move elsewhere."""
    for seed in range(100):
        unforced = splits.make_splits(PATIENTS, FRACTIONS, seed=seed)
        for patient in PATIENTS:
            if unforced[patient] == split != fixed_to:
                return seed, patient
    raise AssertionError(f"no seed below 100 puts a patient in {split}")


def test_make_splits_forces_a_volume_the_hash_would_train_on_into_test():
    """Mutant: ``fixed`` ignored (or forced patients left among the free ones and reassigned)."""
    seed, patient = _hash_assigns("train", "test")
    assert splits.make_splits(PATIENTS, FRACTIONS, seed=seed)[patient] == "train"
    forced = splits.make_splits(PATIENTS, FRACTIONS, seed=seed, fixed={patient: "test"})
    assert forced[patient] == "test"
    assert sum(s == "test" for s in forced.values()) == 1 + splits.split_counts(9, FRACTIONS)["test"]


def _manifest(fixed_split: dict[str, str] | None = None) -> pd.DataFrame:
    rows = [{"volume_id": f"series__{p}", "patient_id": p, "format": "nifti",
             "fixed_split": (fixed_split or {}).get(p), "status": "cached"} for p in PATIENTS]
    return pd.DataFrame(rows)


def test_assign_splits_holds_out_a_volume_the_hash_would_train_on():
    """Mutant: the ``held_out_patterns`` forcing of ``assign_splits`` dropped (or turned into ``train``)."""
    seed, patient = _hash_assigns("train", "test")
    unforced = preprocess.assign_splits(_manifest(), fractions=FRACTIONS, seed=seed)
    assert dict(zip(unforced["volume_id"], unforced["split"], strict=True))[f"series__{patient}"] == "train"
    forced = preprocess.assign_splits(_manifest(), fractions=FRACTIONS, seed=seed,
                                      held_out_patterns=[f"*__{patient}"])
    split = dict(zip(forced["volume_id"], forced["split"], strict=True))
    assert split[f"series__{patient}"] == "test"
    assert sum(s == "test" for s in split.values()) == 1 + splits.split_counts(9, FRACTIONS)["test"]


def test_assign_splits_trains_on_a_volume_the_hash_would_hold_out():
    """Mutant: the ``train_patterns`` forcing dropped (the head CT is trained on by decision, not by hash)."""
    seed, patient = _hash_assigns("test", "train")
    unforced = preprocess.assign_splits(_manifest(), fractions=FRACTIONS, seed=seed)
    assert dict(zip(unforced["volume_id"], unforced["split"], strict=True))[f"series__{patient}"] == "test"
    forced = preprocess.assign_splits(_manifest(), fractions=FRACTIONS, seed=seed,
                                      train_patterns=[f"*{patient}"])
    assert dict(zip(forced["volume_id"], forced["split"], strict=True))[f"series__{patient}"] == "train"


def test_split_of_sources_keeps_a_source_split_unless_held_out():
    """Mutants: a source's own split (OpenKBP's challenge split) dropped; held-out not overriding it."""
    seed, patient = _hash_assigns("train", "external")
    other = next(p for p in PATIENTS if p != patient)
    manifest = _manifest({patient: "external", other: "external"})
    sources = [_Source(r.volume_id, r.patient_id, r.format, r.fixed_split) for r in manifest.itertuples()]
    split = preprocess.split_of_sources(sources, fractions=FRACTIONS, seed=seed,
                                        held_out_patterns=[f"*__{other}"])
    assert split[f"series__{patient}"] == "external" and split[f"series__{other}"] == "test"


@dataclasses.dataclass(frozen=True)
class _Source:
    """What ``split_of_sources`` reads of a ``catalog.VolumeSource``."""

    volume_id: str
    patient_id: str
    format: str
    fixed_split: str | None


# ---------------------------------------------------------------------------------------------
# 3. Latents are not clipped
# ---------------------------------------------------------------------------------------------
class ConstantX0(nn.Module):
    """A U-Net stand-in predicting x0 = 3 everywhere (latents have no fixed range; 3 is outside [-1, 1])."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device and dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, : self.channels], 3.0) + self.anchor


def test_sample_latents_keeps_latents_outside_minus_one_one():
    """Mutant: ``clip_x0=(-1, 1)`` passed to the sampler, or the window's x0 clamped, in
    ``sample_latents``."""
    schedule = schedules.make_schedule("linear", num_train_timesteps=50)
    denoiser = Denoiser(ConstantX0(), "x0", schedule)
    cond = torch.zeros(1, 4, 10, 2, 2)
    spans = pipeline.window_spans(10, 6, 2)
    weights = pipeline.blend_weights(spans, 10)
    options = pipeline.InterpolationOptions(steps=3, progress=False)
    latents = pipeline.sample_latents(denoiser, cond, spans, weights, options, sample=0)
    torch.testing.assert_close(latents, torch.full_like(latents, 3.0), rtol=0, atol=1e-5)


TINY_VAE = vae_module.VAEConfig(channels=(8, 8, 8, 8), num_res_blocks=1, norm_num_groups=4)


def test_interpolate_volume_calls_the_sampler_without_clipping(monkeypatch):
    """Mutant: the pipeline's sampler call given ``clip_x0`` (image-space [-1, 1]) in latent space."""
    torch.manual_seed(0)
    interp = bundle.Interpolator(vae_module.build_vae(TINY_VAE), ConstantX0(),
                                 latent_diffusion.InterpDiffusionSpec(factor=4, prediction="x0"),
                                 0.8, windows.FULL, 2, "cpu")
    calls: list[tuple[dict, torch.Tensor]] = []
    real_get_sampler = samplers.get_sampler

    def spy_get_sampler(name):
        sampler = real_get_sampler(name)

        def spy(denoiser, shape, **kwargs):
            out = sampler(denoiser, shape, **kwargs)
            calls.append((kwargs, out))
            return out

        return spy

    monkeypatch.setattr(samplers, "get_sampler", spy_get_sampler)
    decoded: list[torch.Tensor] = []
    real_decode = pipeline.SliceCodec.decode

    def spy_decode(codec, latents, *args, **kwargs):
        decoded.append(latents.clone())
        return real_decode(codec, latents, *args, **kwargs)

    monkeypatch.setattr(pipeline.SliceCodec, "decode", spy_decode)
    pair = thick_slices.thick_thin_pair(phantom.ct_phantom(shape=(16, 16, 16), seed=0), 4)
    pipeline.interpolate_volume(pair.thick, interp, steps=2, window_depth=8, overlap=2, progress=False)
    assert len(calls) >= 2
    for kwargs, out in calls:
        assert kwargs.get("clip_x0") is None
        torch.testing.assert_close(out, torch.full_like(out, 3.0), rtol=0, atol=1e-5)
    assert len(decoded) == 1  # the blended latents reach the decoder unclipped
    torch.testing.assert_close(decoded[0], torch.full_like(decoded[0], 3.0), rtol=0, atol=1e-5)
