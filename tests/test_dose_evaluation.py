"""Dose evaluation: oracle and scaled predictions against closed forms, a tiny trained-model checkpoint end to
end, per-patient seeding of the diffusion sampler, constraint agreement and the anchors table."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from ctlib import checkpoint
from ctlib.data import windows
from ctlib.metrics import dose_scores
from ctlib.models import dose_unet, latent_unet
from ctlib.studies.dose import datasets, diffusion, evaluation, model_io
from ctlib.studies.dose.patient_file import save_dose_patient
from tests.test_dose_datasets import synthetic_patient

NAMES = ["PTV70_prescription_gy", "Brainstem_Dmax_gy", "Brainstem_present", "PTV70_present"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the tiny convolutions and gamma loops only wait on each other
    with more on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Scaled(evaluation.DoseModelBundle):
    """A bundle whose prediction is the planned dose times ``factor`` (no network)."""

    factor: float = 1.0

    def predict(self, patient):
        return (patient.dose_gy * self.factor).astype(np.float32)


def _scaled(factor: float) -> _Scaled:
    bundle = _Scaled(run_id="oracle", variant="oracle", module=torch.nn.Identity(),
                     run=SimpleNamespace(kind="unet", model_config={"kind": "unet", "loss": "oracle"}))
    bundle.factor = factor
    return bundle


def test_oracle_scores_perfectly_and_agrees_on_every_constraint():
    p = synthetic_patient()
    result = evaluation.evaluate_patient(_scaled(1.0), p)
    assert result.row["dose_score_gy"] == 0.0 and result.row["dvh_score_gy"] == 0.0
    # Brainstem 2, PTV70 3
    assert result.row["gamma_pass_percent"] == 100.0 and result.row["dvh_pairs"] == 2 + 3
    checked = result.constraints.dropna(subset=["planned_pass"])
    assert set(checked["structure"]) == {"Brainstem", "PTV70"} and checked["agree"].all()
    missing = result.constraints[result.constraints["structure"] == "SpinalCord"]
    assert missing["note"].tolist() == ["missing"] and missing["planned_pass"].isna().all()


def test_scaled_prediction_matches_closed_forms():
    p = synthetic_patient()
    result = evaluation.evaluate_patient(_scaled(1.1), p)
    pdm = p.possible_dose_mask
    assert result.row["dose_score_gy"] == pytest.approx(0.1 * p.dose_gy[pdm].mean(), rel=1e-5)
    true = dose_scores.dvh_metrics(p.dose_gy, evaluation.structure_masks(p), p.spacing_mm).values
    # percentiles and means scale with the dose: each DVH error is 0.1 x the planned metric
    assert result.row["dvh_score_gy"] == pytest.approx(0.1 * np.mean(list(true.values())), rel=1e-5)
    errors = pd.DataFrame(result.dvh).set_index(["structure", "metric"])["abs_error_gy"]
    for key, value in true.items():
        assert errors[key] == pytest.approx(0.1 * value, rel=1e-5, abs=1e-6)
    # a 10 % overdose fails gamma 3 %/3 mm in the high-dose region: pass rate below 100
    assert 0.0 < result.row["gamma_pass_percent"] < 100.0
    assert np.nanmax(result.gamma_map) > 1.0 and np.isnan(result.gamma_map[~pdm]).all()


def _run_dir(tmp_path, kind: str = "unet"):
    """A fake training run: params.json and checkpoints/dose_model.pt of a tiny untrained model."""
    run_dir = tmp_path / f"20261123-000000_dose_train_{'aaaa' if kind == 'unet' else 'bbbb'}"
    (run_dir / "checkpoints").mkdir(parents=True)
    scales = datasets.constraint_scales(NAMES, 80.0)
    roi_names = ["Brainstem", "PTV70"]
    torch.manual_seed(0)
    if kind == "unet":
        config = dose_unet.DoseUNetConfig(in_channels=4, constraint_dim=4, channels=(4, 8), num_res_units=1,
                                          film_hidden=8, constraint_scales=scales)
        model_config = model_io.unet_model_config(config, "mae", {}, roi_names)
    else:
        spec = diffusion.DoseDiffusionSpec(num_train_timesteps=50)
        config = latent_unet.LatentUNetConfig(
            channels=(8, 8),
            attention_levels=(False, False),
            num_res_blocks=1,
            num_head_channels=8,
            norm_num_groups=8,
            latent_channels=1,
            cond_channels=diffusion.condition_channels(4, 4, spec),
        )
        model_config = model_io.diffusion_model_config(config, spec, scales, roi_names)
    module = model_io.build_module(model_config)
    normalization = {**windows.normalization_record("full"), "sdf_clip_mm": 50.0, "include_pdm": True}
    checkpoint.save_checkpoint(run_dir / "checkpoints" / "dose_model.pt", model_state=module.state_dict(),
                               config={"model": model_config}, normalization=normalization,
                               extra={"preprocess_run_id": "pre", "patch_size": [4, 8, 8]},
                               rng_state=False)
    params = {"sw_roi": [4, 8, 8], "sw_overlap": 0.25, "sw_blend": "constant", "sample_steps": 2}
    (run_dir / "params.json").write_text(json.dumps({"parameters": params}))
    return run_dir


def _patient_files(tmp_path, n: int = 2):
    paths = []
    for i in range(n):
        p = synthetic_patient(seed=i, patient_id=f"pt_{i + 1}")
        p.split = "test"
        paths.append(save_dose_patient(tmp_path / "patients" / "test" / f"pt_{i + 1}.npz", p))
    return paths


def test_unet_checkpoint_end_to_end(tmp_path):
    bundle = evaluation.load_dose_run(_run_dir(tmp_path))
    assert bundle.variant == "mae" and bundle.model_kind == "unet" and bundle.preprocess_run_id == "pre"
    assert bundle.window_options["roi_size"] == [4, 8, 8] and bundle.window_options["blend"] == "constant"
    seen = []
    result = evaluation.evaluate_patients(
        bundle, _patient_files(tmp_path), keep=["pt_2"], progress=seen.append
    )
    assert list(result.scores["patient"]) == ["pt_1", "pt_2"] == [r["patient"] for r in seen]
    assert set(result.predictions) == set(result.gamma_maps) == {"pt_2"}
    pred, patient = result.predictions["pt_2"], synthetic_patient(seed=1)
    assert pred.shape == patient.shape and float(np.abs(pred[~patient.possible_dose_mask]).max()) == 0.0
    row = result.scores.set_index("patient").loc["pt_2"]
    assert row["dose_score_gy"] == pytest.approx(
        dose_scores.dose_score(pred, patient.dose_gy, patient.possible_dose_mask), rel=1e-6)
    summary = evaluation.summarize(result.scores, result.dvh)
    assert summary.loc["mae", "patients"] == 2
    assert summary.loc["mae", "dvh_score_gy"] == pytest.approx(result.dvh["abs_error_gy"].mean())
    assert summary.loc["mae", "dose_score_gy"] == pytest.approx(result.scores["dose_score_gy"].mean())
    table = evaluation.with_anchors(summary)
    assert list(table.index) == ["mae", "OpenKBP challenge winner", "plain 3D U-Net"]
    assert (
        table.loc["OpenKBP challenge winner", "dose_score_gy"] == 2.43 and table.loc["mae", "patients"] == 2
    )
    constraints = evaluation.constraint_summary(result.constraints)
    assert (constraints["patients"] == 2).all() and constraints["agree_percent"].between(0, 100).all()


def test_diffusion_sample_is_seeded_per_patient(tmp_path):
    bundle = evaluation.load_dose_run(_run_dir(tmp_path, "diffusion"), roi_size=(8, 16, 16), sample_steps=2,
                                     seed=3)
    assert bundle.variant == "diffusion" and bundle.sample_steps == 2
    patient = synthetic_patient()
    first, second = bundle.predict(patient), bundle.predict(patient)
    np.testing.assert_array_equal(first, second)  # the same patient gets the same noise, whatever came before
    bundle.seed = 4
    assert not np.array_equal(first, bundle.predict(patient))


def test_missing_checkpoint_and_no_patients_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dose checkpoint"):
        evaluation.load_dose_run(tmp_path)
    with pytest.raises(ValueError, match="no patient files"):
        evaluation.evaluate_patients(_scaled(1.0), [])


def test_nan_prediction_raises_instead_of_scoring():
    bundle = _scaled(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        evaluation.evaluate_patient(bundle, synthetic_patient(), with_gamma=False)


def test_constraint_agreement_per_variant():
    p = synthetic_patient()
    d95 = dose_scores.dose_at_volume(p.dose_gy[p.mask("PTV70")], 95.0)
    assert d95 < 70.0  # the plan fails PTV70 D95 >= 70 Gy ...
    boost = 1.05 * 70.0 / d95  # ... and a prediction scaled by this passes it
    tables = [evaluation.evaluate_patient(_scaled(f), p, with_gamma=False).constraints.assign(variant=name)
              for f, name in ((1.0, "oracle"), (boost, "boosted"))]
    table = evaluation.constraint_agreement(pd.concat(tables, ignore_index=True))
    assert list(table.columns) == [
        "patients",
        "planned_pass_percent",
        "agree % (oracle)",
        "agree % (boosted)",
    ]
    assert (table["agree % (oracle)"] == 100.0).all() and (table["patients"] == 1).all()
    ptv = table.xs("PTV70", level="structure")
    assert ptv["planned_pass_percent"].item() == 0.0 and ptv["agree % (boosted)"].item() == 0.0
