"""The X-ray-to-CT study's models, sampling, data consistency, baselines, run loader and scoring helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ctlib.data import phantom, windows
from ctlib.errors import CTInputError
from ctlib.studies.xray2ct import (
    baselines,
    evaluation,
    networks,
    normalization,
    projection,
    run_kind,
    sampling,
    training,
)
from ctlib.studies.xray2ct.views import ViewGeometry
from ctlib.train import loop

GEOMETRY = ViewGeometry(volume_size=16, voxel_mm=16.0, detector_pixels=(16, 16), n_samples=32)
TINY = {
    "lift": {"channels": 4, "features": [4, 4, 8, 8, 16, 4]}, "unet_features": (4, 4, 8, 8, 16, 4),
    "channels": (8, 8), "attention_levels": (False, False), "norm_num_groups": 4, "num_head_channels": 8,
}  # fmt: skip


def _phantoms(n: int) -> tuple[np.ndarray, np.ndarray]:
    volumes = np.stack([
        phantom.ct_phantom((16, 16, 16), (16.0, 16.0, 16.0), seed=s, kind="chest" if s % 2 else "head").array
        for s in range(n)
    ])  # fmt: skip
    return volumes, GEOMETRY.render_hu(torch.from_numpy(volumes)).numpy()


def test_lifter_places_each_view_along_its_rays() -> None:
    torch.manual_seed(0)
    model = networks.build(networks.X2CTConfig(kind="deterministic", geometry=GEOMETRY.to_dict(), **TINY))
    drrs = torch.zeros(1, 2, 16, 16)
    drrs[0, 0, :, 3] = 5.0  # one bright column of the PA view
    lifted = model.lifter(drrs)
    assert lifted.shape == (1, 2 * (4 + 1), *GEOMETRY.shape)
    density = lifted[0, 0]  # the PA view's mean-density channel, constant along each PA ray (the y axis)
    column_profile = density.mean(dim=(0, 1))
    assert int(column_profile.argmax()) in (2, 3, 4)
    assert float(lifted[0, 5].detach().abs().max()) == 0.0  # the empty lateral view: its density channel is 0


def test_sirt_step_moves_a_volume_towards_its_views() -> None:
    volumes, drrs = _phantoms(1)
    truth = normalization.to_model(torch.from_numpy(volumes), normalization.RECON)[:, None]
    start = torch.zeros_like(truth)  # water everywhere
    step = projection.SIRTConsistency(torch.from_numpy(drrs), GEOMETRY, normalization.RECON, weight=1.0)
    before = projection.projection_loss(start, torch.from_numpy(drrs), GEOMETRY, normalization.RECON)
    corrected = step(start)
    for _ in range(4):
        corrected = step(corrected)
    after = projection.projection_loss(corrected, torch.from_numpy(drrs), GEOMETRY, normalization.RECON)
    assert float(after) < 0.5 * float(before)
    assert (
        projection.SIRTConsistency(torch.from_numpy(drrs), GEOMETRY, normalization.RECON, 0.0)(start) is start
    )


def test_corrected_denoiser_with_identity_correction_changes_nothing() -> None:
    torch.manual_seed(0)
    model = networks.build(networks.X2CTConfig(kind="diffusion", geometry=GEOMETRY.to_dict(), **TINY)).eval()
    for p in model.unet.out.parameters():
        torch.nn.init.normal_(p, 0.0, 0.1)
    base = model.denoiser(torch.rand(1, 2, 16, 16), training.SPEC)
    fields = {name: getattr(base, name) for name in ("network", "prediction", "schedule", "cond")}
    same = sampling.CorrectedDenoiser(**fields, correct=lambda x0: x0)
    x_t, t = torch.randn(1, 1, *GEOMETRY.shape), torch.tensor([300])
    with torch.no_grad():
        torch.testing.assert_close(same(x_t, t), base(x_t, t), atol=2e-4, rtol=1e-4)
        shifted = sampling.CorrectedDenoiser(**fields, correct=lambda x0: x0 + 0.5)(x_t, t)
        x0_shifted, _ = sampling.parameterization.predict_x0_eps(
            "v", shifted, x_t, t, training.SPEC.noise_schedule()
        )
        x0_base, _ = sampling.parameterization.predict_x0_eps(
            "v", base(x_t, t), x_t, t, training.SPEC.noise_schedule()
        )
    torch.testing.assert_close(x0_shifted, x0_base + 0.5, atol=1e-3, rtol=0)


@pytest.mark.parametrize("kind", ["deterministic", "diffusion"])
def test_train_reload_predict_round_trip(tmp_path, kind: str) -> None:
    volumes, drrs = _phantoms(4)
    dataset = training.PairDataset(volumes, drrs, normalization.RECON)
    config = networks.X2CTConfig(kind=kind, geometry=GEOMETRY.to_dict(), **TINY)
    torch.manual_seed(0)
    model = networks.build(config)
    loss = (training.DeterministicLoss(GEOMETRY, normalization.RECON) if kind == "deterministic"
            else training.DiffusionLoss(GEOMETRY, normalization.RECON, projection_weight=0.1))  # fmt: skip
    train_config = loop.TrainConfig(steps=3, batch_size=2, lr=1e-3, log_every=1)
    path = tmp_path / "checkpoints" / "x2ct_model.pt"
    spec = training.SPEC.to_dict() if kind == "diffusion" else None
    history = loop.train(
        model, loss, loop.batch_stream(dataset, train_config), train_config, checkpoint_path=path,
        normalization=windows.normalization_record(normalization.RECON), model_config=config.to_dict(),
        extra={"preprocess_run_id": "pre", "spec": spec},
    )  # fmt: skip
    assert len(history) == 3 and all(np.isfinite(h["loss"]) for h in history)
    assert "projection" in history[-1]
    run = run_kind.X2CTRun.load(path)
    assert run.kind == kind and run.window == normalization.RECON and run.preprocess_run_id == "pre"
    if kind == "deterministic":
        predicted = evaluation.predict_deterministic(run, drrs[:2])
        assert (
            predicted.shape == (2, *GEOMETRY.shape) and predicted.min() >= -1000 and predicted.max() <= 1000
        )
    else:
        assert run.spec == training.SPEC
        samples = evaluation.sample_case(run, drrs[0], num_samples=2, num_steps=2, consistency_weight=0.5)
        assert samples.shape == (2, *GEOMETRY.shape) and not np.allclose(samples[0], samples[1])


def test_loader_refuses_a_checkpoint_of_another_kind(tmp_path) -> None:
    path = tmp_path / "x2ct_model.pt"
    torch.save(
        {"config": {"model": {"kind": "nonsense"}}, "normalization": {}, "extra": {}, "model_state": {}}, path
    )
    with pytest.raises(CTInputError, match="x2ct_model.pt"):
        run_kind.X2CTRun.load(path)


def test_backprojection_baseline_calibrates_on_training_pairs() -> None:
    volumes, drrs = _phantoms(6)
    model = baselines.BackprojectionBaseline(GEOMETRY).fit(drrs[:4], volumes[:4])
    predicted = model.predict(drrs[4:])
    assert predicted.shape == volumes[4:].shape
    raw = 1000.0 * (baselines.backprojected_density(drrs[:4], GEOMETRY) - 1.0)
    a, b = model.coefficients
    fitted = np.square(a * raw + b - volumes[:4]).mean()
    assert fitted <= np.square(raw - volumes[:4]).mean()  # least squares beats the uncalibrated map
    assert fitted <= np.square(1.01 * a * raw + b - volumes[:4]).mean()  # and a perturbed calibration
    mean = baselines.training_mean(volumes[:4])
    np.testing.assert_allclose(mean, volumes[:4].mean(axis=0), rtol=1e-5)


def test_summary_table_and_paired_difference() -> None:
    frame = pd.DataFrame({"case_id": ["a", "b", "a", "b"], "method": ["x", "x", "y", "y"],
                          "psnr_3d_soft_tissue_db": [20.0, 22.0, 18.0, 21.0]})  # fmt: skip
    table = evaluation.summary_table(frame, ["psnr_3d_soft_tissue_db"])
    assert table.loc["x", ("psnr_3d_soft_tissue_db", "mean")] == 21.0
    diff = evaluation.paired_difference(frame, "x", "y", "psnr_3d_soft_tissue_db")
    assert diff["mean"] == 1.5 and diff["cases"] == 2 and diff["a_better"] == 2
