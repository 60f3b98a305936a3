"""On-the-fly augmentation of whole dose volumes that respects left and right.

- ``mirror``: the left-right mirror (the last axis, W, is the patient's left-right axis in the OpenKBP
  grids: LeftParotid sits at larger W than RightParotid in every training patient), with every
  ``Left*`` / ``Right*`` structure channel, mask and constraint entry swapped, so a mirrored left parotid
  is still called the left parotid. Also the test-time augmentation of ``ctlib.studies.dose.inference``.
- ``rigid_warp``: a small rotation about the cranio-caudal axis (in the axial H-W plane, whose voxels are
  square in OpenKBP) and a shift, by ``torch.nn.functional.grid_sample``: linear for inputs (border values
  past the edge), normalized linear for the dose inside the possible-dose mask, linear then >= 0.5 for
  the masks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ctlib.config import ConfigDict

SIDES = ("Left", "Right")


@dataclasses.dataclass
class AugmentConfig(ConfigDict):
    """Random augmentation of a training volume (all off: ``AugmentConfig(0, 0, 0)``)."""

    mirror_probability: float = 0.5  # left-right mirror with Left / Right structures swapped
    max_rotation_deg: float = 10.0  # uniform axial rotation in [-max, max] degrees
    max_shift_voxels: float = 3.0  # uniform shift in [-max, max] voxels along D, H and W


def mirror_permutation(names: Sequence[str]) -> list[int]:
    """Index permutation that swaps every name containing ``Left`` with its ``Right`` twin (and back);
    a name without a twin maps to itself."""
    names = [str(n) for n in names]
    position = {n: i for i, n in enumerate(names)}
    out = []
    for name in names:
        twin = name
        for a, b in (SIDES, SIDES[::-1]):
            if a in name:
                twin = name.replace(a, b)
                break
        out.append(position.get(twin, position[name]))
    return out


def mirror_inputs(
    inputs: torch.Tensor, constraints: torch.Tensor, roi_names: Sequence[str], constraint_names: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror ``(B, C, D, H, W)`` network inputs (CT, one SDF per ``roi_names``, optional pdm) along W and
    swap the left / right SDF channels and constraint entries ``(B, K)``."""
    rois = mirror_permutation(roi_names)
    channels = [0] + [1 + i for i in rois] + list(range(1 + len(rois), inputs.shape[1]))
    return inputs[:, channels].flip(-1), constraints[:, mirror_permutation(constraint_names)]


def mirror_sample(
    sample: dict[str, Any], roi_names: Sequence[str], constraint_names: Sequence[str]
) -> dict[str, Any]:
    """A training sample (``inputs (C, D, H, W)``, ``constraints (K,)``, ``dose``, ``pdm``, ``masks``)
    mirrored."""
    inputs, constraints = mirror_inputs(
        sample["inputs"][None], sample["constraints"][None], roi_names, constraint_names
    )
    out = dict(sample, inputs=inputs[0], constraints=constraints[0])
    out["dose"], out["pdm"] = sample["dose"].flip(-1), sample["pdm"].flip(-1)
    out["masks"] = sample["masks"][mirror_permutation(roi_names)].flip(-1)
    return out


def _grid(shape: Sequence[int], angle_rad: float, shift_voxels: Sequence[float], device: torch.device):
    """``grid_sample`` grid ``(1, D, H, W, 3)``: output voxel -> input voxel, rotated about the volume's
    centre in the H-W plane and shifted by ``shift_voxels`` (D, H, W)."""
    d, h, w = (int(s) for s in shape)
    cos, sin = math.cos(angle_rad), math.sin(angle_rad)
    # normalized coordinates (x = W, y = H, z = D); a shift of s voxels is 2 s / n in them
    theta = torch.tensor(
        [[cos, -sin * h / w, 0.0, 2 * shift_voxels[2] / w],
         [sin * w / h, cos, 0.0, 2 * shift_voxels[1] / h],
         [0.0, 0.0, 1.0, 2 * shift_voxels[0] / d]],
        dtype=torch.float32, device=device,
    )[None]
    return F.affine_grid(theta, [1, 1, d, h, w], align_corners=False)


def _warp(volume: torch.Tensor, grid: torch.Tensor, padding: str) -> torch.Tensor:
    return F.grid_sample(volume[None].float(), grid, mode="bilinear", padding_mode=padding,
                         align_corners=False)[0]


def rigid_warp(sample: dict[str, Any], angle_deg: float, shift_voxels: Sequence[float]) -> dict[str, Any]:
    """The sample rotated by ``angle_deg`` in the axial plane and shifted (see the module docstring)."""
    inputs = sample["inputs"]
    grid = _grid(inputs.shape[-3:], math.radians(angle_deg), shift_voxels, inputs.device)
    pdm_f = sample["pdm"].float()
    weight = _warp(pdm_f, grid, "zeros")
    dose = _warp(sample["dose"].float() * pdm_f, grid, "zeros")
    pdm = weight >= 0.5
    return dict(
        sample,
        inputs=_warp(inputs, grid, "border"),
        dose=torch.where(pdm, dose / weight.clamp_min(1e-6), torch.zeros_like(dose)),
        pdm=pdm,
        masks=_warp(sample["masks"].float(), grid, "zeros") >= 0.5,
    )


def augment_sample(
    sample: dict[str, Any], config: AugmentConfig, rng: np.random.Generator,
    roi_names: Sequence[str], constraint_names: Sequence[str],
) -> dict[str, Any]:
    """``config``'s random mirror, rotation and shift of one sample, every choice drawn from ``rng``."""
    mirror = rng.random() < config.mirror_probability
    angle = float(rng.uniform(-1, 1)) * config.max_rotation_deg
    shift = rng.uniform(-1, 1, size=3) * config.max_shift_voxels
    if mirror:
        sample = mirror_sample(sample, roi_names, constraint_names)
    if angle or np.any(shift):
        sample = rigid_warp(sample, angle, shift.tolist())
    return sample
