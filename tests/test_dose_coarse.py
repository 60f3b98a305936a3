"""Coarse whole-patient dose recipe: masked pooling and normalized upsampling, left-right mirroring with
structure swaps, rigid warps, the in-memory volume dataset, mirror test-time augmentation and ensembles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ctlib.io.openkbp import ROI_NAMES
from ctlib.studies.dose import augment, coarse, features, inference, volume_dataset
from ctlib.studies.dose.ensemble import DoseEnsemble
from tests.test_dose_datasets import synthetic_patient

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_masked_pooling_and_normalized_upsampling_keep_a_constant_dose_at_the_skin():
    pdm = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    pdm[..., 1:7, 1:6, 2:7] = True  # edges cut through pooling blocks
    dose = torch.where(pdm, torch.tensor(50.0), torch.tensor(0.0))
    coarse_dose, coarse_mask = coarse.pool_dose(dose, pdm, 2)
    assert torch.allclose(coarse_dose[coarse_mask], torch.tensor(50.0))
    fine = coarse.upsample_dose(coarse_dose, coarse_mask, (8, 8, 8), 2)
    assert torch.allclose(fine[pdm], torch.tensor(50.0), atol=1e-4)  # plain pooling gives 6.25 Gy corners
    plain = torch.nn.functional.interpolate(torch.nn.functional.avg_pool3d(dose, 2), scale_factor=2,
                                            mode="trilinear")
    assert float((plain[pdm] - 50).abs().max()) > 10  # what the normalization avoids


def test_pool_inputs_pads_each_channel_with_its_far_outside_value():
    inputs = torch.zeros(1, 4, 5, 6, 7)  # CT, two SDFs, pdm
    pooled = coarse.pool_inputs(inputs, 2, include_pdm=True)
    assert pooled.shape == (1, 4, 3, 3, 4)
    assert pooled[0, 0, -1, 0, 0] == pytest.approx(-0.5)  # half CT 0, half padding -1
    assert pooled[0, 1, -1, 0, 0] == pytest.approx(0.5) and pooled[0, 2, 0, 0, -1] == pytest.approx(0.5)
    assert pooled[0, 3, -1, -1, -1] == 0.0
    assert coarse.upsample_dose(torch.ones(1, 1, 3, 3, 4), torch.ones(1, 1, 3, 3, 4, dtype=torch.bool),
                                (5, 6, 7), 2).shape == (1, 1, 5, 6, 7)


def test_mirror_permutation_swaps_left_and_right_structures_and_constraints():
    rois = mirror = augment.mirror_permutation(ROI_NAMES)
    left, right = ROI_NAMES.index("LeftParotid"), ROI_NAMES.index("RightParotid")
    assert mirror[left] == right and mirror[right] == left
    assert all(mirror[i] == i for i in range(len(ROI_NAMES)) if i not in (left, right))
    names = features.constraint_names()
    perm = augment.mirror_permutation(names)
    assert names[perm[names.index("LeftParotid_present")]] == "RightParotid_present"
    assert names[perm[names.index("RightParotid_Dmean_gy")]] == "LeftParotid_Dmean_gy"
    assert sorted(perm) == list(range(len(names))) and len(rois) == len(ROI_NAMES)


def test_mirrored_sample_calls_the_mirrored_left_parotid_left():
    roi_names = ["RightParotid", "LeftParotid", "PTV70"]
    constraint_names = ["RightParotid_present", "LeftParotid_present", "PTV70_present"]
    masks = torch.zeros(3, 2, 4, 6, dtype=torch.bool)
    masks[0, ..., :2] = True  # right parotid at small W
    masks[1, ..., 4:] = True  # left parotid at large W
    masks[1, 0, 0, 5] = False  # an asymmetry the swap must carry
    sdf = torch.where(masks, -1.0, 1.0)
    sample = {"inputs": torch.cat([torch.zeros(1, 2, 4, 6), sdf, torch.ones(1, 2, 4, 6)]),
              "constraints": torch.tensor([1.0, 0.0, 1.0]), "dose": torch.arange(48.0).reshape(1, 2, 4, 6),
              "pdm": torch.ones(1, 2, 4, 6, dtype=torch.bool), "masks": masks}
    out = augment.mirror_sample(sample, roi_names, constraint_names)
    assert torch.equal(out["masks"][1], masks[0].flip(-1))  # the new left parotid: the mirrored right one
    assert torch.equal(out["masks"][1][..., 4:], torch.ones(2, 4, 2, dtype=torch.bool))  # at large W
    assert torch.equal(out["inputs"][2], sdf[0].flip(-1)) and torch.equal(out["inputs"][1], sdf[1].flip(-1))
    assert out["constraints"].tolist() == [0.0, 1.0, 1.0]
    assert torch.equal(out["dose"], sample["dose"].flip(-1))
    back = augment.mirror_sample(out, roi_names, constraint_names)
    assert all(torch.equal(back[k], sample[k]) for k in ("inputs", "constraints", "dose", "masks"))


def test_rigid_warp_identity_and_quarter_turn_move_every_channel_alike():
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((2, 4, 8, 8)) > 0.5)
    pdm = torch.ones(1, 4, 8, 8, dtype=torch.bool)
    sample = {"inputs": torch.where(masks, -1.0, 1.0), "dose": torch.rand(1, 4, 8, 8) * 70, "pdm": pdm,
              "masks": masks, "constraints": torch.ones(2)}
    same = augment.rigid_warp(sample, 0.0, [0.0, 0.0, 0.0])
    assert torch.allclose(same["inputs"], sample["inputs"], atol=1e-5)
    assert torch.equal(same["masks"], masks) and torch.allclose(same["dose"], sample["dose"], atol=1e-4)
    turned = augment.rigid_warp(sample, 90.0, [0.0, 0.0, 0.0])
    assert turned["masks"].float().mean() == masks.float().mean()  # a quarter turn of a square grid
    assert torch.equal(turned["inputs"] < 0, turned["masks"])  # SDF channels and masks turned alike
    assert not torch.equal(turned["masks"], masks)
    shifted = augment.rigid_warp(sample, 0.0, [0.0, 0.0, 1.0])  # one voxel along W
    assert torch.equal(shifted["masks"][..., :-1], masks[..., 1:])


def test_coarse_volumes_are_padded_whole_patients_with_seeded_augmentation():
    patients = [synthetic_patient((8, 16, 16), seed=0),
                synthetic_patient((6, 14, 16), seed=1, patient_id="pt_2")]
    data = volume_dataset.CoarseDoseVolumes(patients, factor=2, multiple=4, copies_per_epoch=3)
    assert len(data) == 6 and data.groups == [3, 3] and data.shape == (4, 8, 8)
    plain = data.sample(4, np.random.default_rng(0))
    assert plain["inputs"].shape == (4, 4, 8, 8) and plain["patient_index"] == 1
    assert float(plain["inputs"][0, 3].mean()) == -1.0  # the second patient is padded with CT -1 along D
    aug = volume_dataset.CoarseDoseVolumes(patients, factor=2, multiple=4,
                                           augmentation=augment.AugmentConfig(1.0, 10.0, 1.0))
    a, b = aug.sample(0, np.random.default_rng(5)), aug.sample(0, np.random.default_rng(5))
    assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["dose"], b["dose"])
    assert not torch.equal(a["inputs"], aug.sample(0, np.random.default_rng(6))["inputs"])


class _RampAlongW(nn.Module):
    """A model that is not left-right symmetric: dose = W index (coarse grid)."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        w = torch.arange(x.shape[-1], dtype=x.dtype).expand(*x.shape[:1], 1, *x.shape[2:])
        return w + self.p


def test_mirror_tta_averages_the_prediction_and_its_mirror():
    patient = synthetic_patient((8, 16, 16))
    patient.possible_dose_mask[:] = True
    options = dict(roi_size=(4, 8, 8), overlap=0.0, blend="constant", resolution_factor=2)
    plain = inference.predict_patient(_RampAlongW(), patient, **options)
    tta = inference.predict_patient(_RampAlongW(), patient, mirror_tta=True, **options)
    assert plain[0, 0, -1] > plain[0, 0, 0] + 5  # the ramp, upsampled from the coarse grid
    np.testing.assert_allclose(tta, 3.5, atol=1e-5)  # (w + (7 - w)) / 2 on the 8 coarse columns


class _Constant:
    def __init__(self, value: float, run_id: str) -> None:
        self.value, self.run_id, self.model_kind, self.variant = value, run_id, "unet", "mae"

    def predict(self, patient):
        return np.full(patient.shape, self.value, dtype=np.float32)


def test_ensemble_is_the_mean_of_its_members():
    patient = synthetic_patient()
    ensemble = DoseEnsemble([_Constant(10.0, "a"), _Constant(20.0, "b"), _Constant(60.0, "c")])
    np.testing.assert_allclose(ensemble.predict(patient), 30.0)
    assert ensemble.run_id == "a+b+c" and ensemble.model_kind == "unet"
    with pytest.raises(ValueError, match="at least one"):
        DoseEnsemble([])
