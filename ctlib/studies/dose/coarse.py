"""Coarse-grid dose prediction: the dose U-Net sees the whole patient at ``1 / factor`` resolution.

A 128^3 OpenKBP grid pooled by 2 is 64^3: one window holds the whole head and neck, so the network sees
every target and organ at once (patches of it did not), and a training step costs about a tenth of a
full-resolution one, which is what lets a CPU budget converge.

- ``pool_inputs``: network inputs ``(C, D, H, W)`` -> ``(C, D/f, H/f, W/f)`` by average pooling (the grid
  padded first to a multiple of ``factor`` with each channel's "far outside" value);
- ``pool_dose``: masked (normalized) average pooling of the dose over possible-dose voxels,
  ``pool(dose * pdm) / pool(pdm)``, and the coarse possible-dose mask ``pool(pdm) > 0``;
- ``upsample_dose``: normalized trilinear interpolation back to the fine grid,
  ``up(d * m) / up(m)`` with ``m`` the coarse mask (Knutsson & Westin 1993, normalized convolution), so
  coarse voxels outside the body do not pull the fine dose towards 0 at the skin. Measured on 6 OpenKBP
  validation patients, pooling the planned dose by 2 and upsampling it this way costs 0.60-1.26 Gy of
  dose score (plain average pooling and trilinear upsampling: 1.1-3.5 Gy): the floor of this variant.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

INPUT_PAD = {"ct": -1.0, "sdf": 1.0, "pdm": 0.0}  # air at the window bottom, "far outside", outside


def _pad_amounts(shape: Sequence[int], factor: int) -> list[int]:
    """``F.pad`` amounts (last axis first) growing each of the last three axes to a multiple of ``factor``."""
    pads: list[int] = []
    for n in reversed(list(shape)[-3:]):
        pads += [0, (-int(n)) % factor]
    return pads


def pad_to_shape(volume: torch.Tensor, shape: Sequence[int], fill: Sequence[float]) -> torch.Tensor:
    """``(..., C, D, H, W)`` padded at the far end of D, H and W to ``shape``, channel c with ``fill[c]``."""
    pads: list[int] = []
    for n, target in zip(reversed(volume.shape[-3:]), reversed(list(shape)), strict=True):
        pads += [0, int(target) - int(n)]
    if not any(pads):
        return volume
    channel_axis = volume.ndim - 4
    return torch.cat(
        [F.pad(volume.narrow(channel_axis, c, 1), pads, value=float(v)) for c, v in enumerate(fill)],
        dim=channel_axis,
    )


def pad_channels(inputs: torch.Tensor, factor: int, fill: Sequence[float]) -> torch.Tensor:
    """``(B, C, D, H, W)`` padded at the far end of D, H and W to multiples of ``factor``,
    channel ``c`` with ``fill[c]``."""
    return pad_to_shape(inputs, [-(-int(n) // factor) * factor for n in inputs.shape[-3:]], fill)


def input_fill(num_channels: int, include_pdm: bool) -> list[float]:
    """Pad value per network input channel: CT, SDFs, then the pdm (``ctlib.studies.dose.datasets``)."""
    n_sdf = num_channels - 1 - int(include_pdm)
    return [INPUT_PAD["ct"]] + [INPUT_PAD["sdf"]] * n_sdf + ([INPUT_PAD["pdm"]] if include_pdm else [])


def pool_inputs(inputs: torch.Tensor, factor: int, *, include_pdm: bool = True) -> torch.Tensor:
    """``(B, C, D, H, W)`` network inputs -> average-pooled ``(B, C, ceil(D/f), ceil(H/f), ceil(W/f))``."""
    if factor == 1:
        return inputs
    padded = pad_channels(inputs, factor, input_fill(inputs.shape[1], include_pdm))
    return F.avg_pool3d(padded, factor)


def pool_mask(pdm: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, 1, D, H, W)`` possible-dose mask -> the coarse mask: blocks with any pdm voxel."""
    if factor == 1:
        return pdm.bool()
    return F.avg_pool3d(F.pad(pdm.float(), _pad_amounts(pdm.shape, factor)), factor) > 0


def pool_dose(
    dose_gy: torch.Tensor, pdm: torch.Tensor, factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked average pooling: ``(B, 1, D, H, W)`` dose and pdm -> coarse dose (mean over the pdm voxels
    of each block, 0 where there is none) and the coarse mask (``pool_mask``)."""
    mask = pdm.to(dose_gy.dtype)
    if factor == 1:
        return dose_gy * mask, pdm.bool()
    pads = _pad_amounts(dose_gy.shape, factor)
    weight = F.avg_pool3d(F.pad(mask, pads), factor)
    total = F.avg_pool3d(F.pad(dose_gy * mask, pads), factor)
    coarse_mask = weight > 0
    return torch.where(coarse_mask, total / weight.clamp_min(1e-12), torch.zeros_like(total)), coarse_mask


def pool_masks(masks: torch.Tensor, factor: int, threshold: float = 0.25) -> torch.Tensor:
    """``(B, S, D, H, W)`` bool structure masks -> coarse masks: blocks at least ``threshold`` inside."""
    if factor == 1:
        return masks.bool()
    pads = _pad_amounts(masks.shape, factor)
    return F.avg_pool3d(F.pad(masks.float(), pads), factor) >= threshold


def upsample_dose(
    coarse_gy: torch.Tensor, coarse_mask: torch.Tensor, shape: Sequence[int], factor: int
) -> torch.Tensor:
    """Normalized trilinear upsampling ``(B, 1, d, h, w)`` -> ``(B, 1, *shape)``: ``up(dose * m) / up(m)``
    with ``m`` the coarse mask; 0 where no coarse mask voxel contributes."""
    if factor == 1:
        return coarse_gy[..., : shape[0], : shape[1], : shape[2]]
    m = coarse_mask.to(coarse_gy.dtype)
    size = [n * factor for n in coarse_gy.shape[-3:]]
    num = F.interpolate(coarse_gy * m, size=size, mode="trilinear", align_corners=False)
    den = F.interpolate(m, size=size, mode="trilinear", align_corners=False)
    fine = torch.where(den > 1e-6, num / den.clamp_min(1e-6), torch.zeros_like(num))
    return fine[..., : shape[0], : shape[1], : shape[2]]
