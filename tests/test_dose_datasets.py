"""Dose patch dataset: channels, crops equal to the whole-volume inputs, PTV bias, seeded draws, padding,
file loading, and a short resumable training run with DoseLoss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctlib.data import windows
from ctlib.models import dose_unet
from ctlib.studies.dose import datasets, losses
from ctlib.studies.dose.patient_file import SDF_CLIP_MM, DosePatient, save_dose_patient
from ctlib.train import loop

ROIS = np.array(["Brainstem", "PTV70"])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_patient(shape=(8, 16, 16), seed: int = 0, patient_id: str = "pt_1") -> DosePatient:
    """A tiny consistent DosePatient: a box PTV near the centre, an OAR, an ellipsoid pdm and a dose."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    pdm = ((zz - d / 2) / d) ** 2 + ((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2 < 0.3
    cz, cy, cx = d // 2 - 1, h // 2 - 2, w // 2 - 2
    ptv = (abs(zz - cz) < 2) & (abs(yy - cy) < 2) & (abs(xx - cx) < 2)
    oar = (abs(zz - cz) < 2) & (yy >= h // 2 + 2) & (abs(xx - w // 2) < 3) & pdm
    masks = np.stack([oar, ptv])
    sdf = np.where(masks, -5.0, 20.0).astype(np.float32)
    dose = (
        70.0 * np.exp(-(((zz - cz) / 3.0) ** 2 + ((yy - cy) / 4.0) ** 2 + ((xx - cx) / 4.0) ** 2) / 4) * pdm
    ).astype(np.float32)
    return DosePatient(
        ct_hu=rng.normal(0, 300, shape).astype(np.float32),
        dose_gy=dose,
        possible_dose_mask=pdm,
        masks=masks,
        present=np.array([True, True]),
        sdf_mm=sdf,
        constraints=np.array([70.0, 54.0, 1.0, 1.0], dtype=np.float32),
        constraint_names=np.array(
            ["PTV70_prescription_gy", "Brainstem_Dmax_gy", "Brainstem_present", "PTV70_present"]
        ),
        spacing_mm=np.array([2.5, 4.0, 4.0]),
        roi_names=ROIS,
        patient_id=patient_id,
        split="train",
    )


def test_network_inputs_channels():
    p = synthetic_patient()
    x = datasets.network_inputs(p, window="soft_tissue")
    assert x.shape == (datasets.num_input_channels(2), 8, 16, 16) == (4, 8, 16, 16)
    np.testing.assert_allclose(x[0], windows.normalize(p.ct_hu, windows.SOFT_TISSUE))
    np.testing.assert_allclose(x[1:3], p.sdf_mm / SDF_CLIP_MM)
    np.testing.assert_array_equal(x[3], p.possible_dose_mask.astype(np.float32))
    assert datasets.network_inputs(p, include_pdm=False).shape[0] == 3
    assert datasets.constraint_scales(p.constraint_names, 80.0) == (80.0, 80.0, 1.0, 1.0)


def test_patch_equals_crop_of_whole_volume_inputs():
    p = synthetic_patient()
    ds = datasets.DosePatchDataset([p], patch_size=(4, 8, 8), window="full", patches_per_patient=3)
    whole = datasets.patient_tensors(p, window="full")
    for i in range(len(ds)):
        s = ds[i]
        z, y, x = s["corner"].tolist()
        crop = (slice(None), slice(z, z + 4), slice(y, y + 8), slice(x, x + 8))
        torch.testing.assert_close(s["inputs"], whole["inputs"][0][crop])
        torch.testing.assert_close(s["dose"], whole["dose"][0][crop])
        assert torch.equal(s["masks"], whole["masks"][0][crop])
        assert torch.equal(s["pdm"], whole["pdm"][0][crop])
        assert s["pdm"].dtype == torch.bool and s["constraints"].shape == (4,)


def test_draws_are_seeded_by_position():
    p = synthetic_patient()
    ds = datasets.DosePatchDataset(
        [p, synthetic_patient(seed=1)], patch_size=(4, 8, 8), patches_per_patient=4
    )
    a = ds.sample(5, np.random.default_rng([0, 0, 7]))
    b = ds.sample(5, np.random.default_rng([0, 0, 7]))
    assert torch.equal(a["corner"], b["corner"]) and a["patient_index"] == 1
    corners = {tuple(ds.sample(0, np.random.default_rng(k))["corner"].tolist()) for k in range(20)}
    assert len(corners) > 1
    assert ds.groups == [4, 4] and len(ds) == 8


def test_ptv_probability_biases_patches_to_the_target():
    p = synthetic_patient(shape=(16, 32, 32))
    def ptv_share(probability: float) -> float:
        ds = datasets.DosePatchDataset(
            [p], patch_size=(4, 8, 8), ptv_probability=probability, patches_per_patient=1
        )
        return float(np.mean([ds.sample(0, np.random.default_rng(k))["masks"][1].any() for k in range(40)]))
    assert ptv_share(1.0) == 1.0
    assert ptv_share(0.0) < 0.5


def test_small_volume_is_padded():
    p = synthetic_patient(shape=(4, 6, 6))
    s = datasets.DosePatchDataset([p], patch_size=(8, 8, 8))[0]
    assert s["inputs"].shape == (4, 8, 8, 8) and s["corner"].tolist() == [0, 0, 0]
    assert float(s["inputs"][0, 4:].max()) == -1.0 and float(s["inputs"][1:3, 4:].min()) == 1.0
    assert not s["pdm"][:, 4:].any() and float(s["dose"][:, 4:].abs().max()) == 0.0
    assert datasets.patch_corner((0, 5, 5), (4, 6, 6), (2, 4, 4)) == (0, 2, 2)


def test_reads_files_through_the_lru(tmp_path):
    paths = [save_dose_patient(tmp_path / f"pt_{i}.npz", synthetic_patient(seed=i, patient_id=f"pt_{i}"))
             for i in range(3)]
    ds = datasets.DosePatchDataset(paths, patch_size=(4, 8, 8), patches_per_patient=2, lru_size=2)
    in_memory = datasets.DosePatchDataset([synthetic_patient(seed=i) for i in range(3)], patch_size=(4, 8, 8),
                                          patches_per_patient=2)
    for i in range(len(ds)):
        torch.testing.assert_close(ds[i]["inputs"], in_memory[i]["inputs"])
    assert ds.lru.loads >= 3 and len(ds.lru._items) == 2
    assert ds.normalization["sdf_clip_mm"] == SDF_CLIP_MM and ds.normalization["include_pdm"] is True
    with pytest.raises(ValueError, match="empty"):
        datasets.DosePatchDataset([])


def test_training_with_dose_loss_resumes_exactly(tmp_path):
    patients = [synthetic_patient(seed=i) for i in range(2)]
    ds = datasets.DosePatchDataset(patients, patch_size=(4, 8, 8), patches_per_patient=2)
    config = dose_unet.DoseUNetConfig(
        in_channels=4,
        constraint_dim=4,
        channels=(4, 8),
        num_res_units=1,
        film_hidden=8,
        constraint_scales=datasets.constraint_scales(patients[0].constraint_names, 80.0),
    )

    def run(steps: int, path, resume: bool = True) -> list[dict]:
        torch.manual_seed(0)
        model = losses.DoseLoss(dose_unet.build_dose_unet(config), "mae_gradient", roi_names=ROIS.tolist())
        train_config = loop.TrainConfig(steps=steps, batch_size=2, lr=1e-2, log_every=1, checkpoint_every=2)
        return loop.train(model, loop.forward_loss, loop.batch_stream(ds, train_config), train_config,
                          checkpoint_path=path, normalization=ds.normalization, model_config=config.to_dict(),
                          resume=resume)

    straight = run(4, tmp_path / "a.pt")
    run(2, tmp_path / "b.pt")
    resumed = run(4, tmp_path / "b.pt")
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-5)
    assert {"mae_gy", "gradient_l1"} <= set(straight[-1])
