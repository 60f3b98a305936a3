"""Gamma index (Low et al., Med Phys 25:656, 1998) in torch, on CPU or CUDA, with pymedphys' search semantics.

For every reference voxel r whose dose is at least the low-dose cutoff,

    gamma(r)^2 = min over offsets s of  ((D_eval(r + s) - D_ref(r)) / (dose_percent % of D_norm))^2
                                        + (|s| / DTA)^2

with D_norm the reference maximum (global gamma) unless ``normalization_gy`` is given. The evaluated dose
is interpolated trilinearly (bilinearly in 2D) at sub-voxel offsets. The offsets are exactly those that
``pymedphys.gamma`` visits (``ctlib.metrics.gamma_search`` builds them and searches them, exactly, much
faster). pymedphys stops searching a voxel once the next radius cannot lower its gamma; the minimum it
returns is therefore the minimum over all these offsets, which is what is computed here, so both agree
to float32 rounding. Points off the grid count as "no agreement" in both; one difference: on the grid's
lower faces, a search point lying in the face plane is on the grid here, while pymedphys' float64
rounding (cos(pi/2) = 6e-17) can put it just outside, so gamma there can be slightly lower than
pymedphys'.

Threads: the search is many small tensor ops, which OpenMP threads slow down (they wait on each other,
badly so on a loaded machine: 30x slower seen on 2 busy cores). On CPU the evaluated voxels are split over
up to ``threads`` Python worker threads (default ``torch.get_num_threads()``, the caller's setting; one per
16k voxels, 8 at most, as each repeats the Python work), each running torch with one intra-op thread; the
caller's torch thread count is set to 1 for the call and put back before it returns. Results do not
depend on the number of threads (to float32 rounding). On a busy machine ``threads=1`` is fastest (on 2
cores shared with other jobs, 2 workers took 1.1-1.4x the time of one: see bench/results/gamma_speed.json).

Conventions: both doses on the same grid (``(z, y, x)`` or ``(y, x)``, spacing in mm in the same order);
the cutoff is a percentage of the normalization dose and applies to the reference only (as in
pymedphys); gamma above ``max_gamma`` is reported as ``max_gamma``; a voxel passes when gamma <= 1
(Low et al.; decided before capping). NaN / infinite doses, mismatched shapes or bad options raise
``ValueError`` naming what is wrong.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ctlib.metrics import gamma_search


@dataclass
class GammaResult:
    """Gamma map (NaN where not evaluated; numpy in -> numpy out, tensor in -> tensor out) and pass rate."""

    gamma: np.ndarray | torch.Tensor
    pass_rate_percent: float  # 100 * mean(gamma <= 1) over evaluated voxels; NaN when there are none
    evaluated_voxels: int


def _as_tensor(name: str, dose: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    tensor = dose if isinstance(dose, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(dose))
    if tensor.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D (y, x) or 3D (z, y, x) dose, got shape {tuple(tensor.shape)}")
    tensor = tensor.to(device=device, dtype=torch.float32)
    # a finite sum means no NaN or infinity (they propagate); only then is the count skipped
    bad = 0 if math.isfinite(float(tensor.sum(dtype=torch.float64))) else int((~torch.isfinite(tensor)).sum())
    if bad:
        raise ValueError(f"{name} (shape {tuple(tensor.shape)}) holds {bad} NaN or infinite voxels")
    return tensor


@contextlib.contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block, the calling thread's count put back after it (also if a
    library such as numba's OpenMP start-up changed it meanwhile). With OpenMP the count is per thread, so
    calls from several threads each restore their own."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def gamma_index(
    reference_dose_gy: np.ndarray | torch.Tensor,
    evaluated_dose_gy: np.ndarray | torch.Tensor,
    spacing_mm: Sequence[float],
    *,
    dose_percent: float = 3.0,
    distance_mm: float = 3.0,
    cutoff_percent: float = 10.0,
    normalization_gy: float | None = None,
    max_gamma: float = 2.0,
    interp_fraction: int = 10,
    device: str | torch.device | None = None,
    chunk_elements: int = 2**20,
    shells_per_band: int = 2,
    threads: int | None = None,
    pass_only: bool = False,
) -> GammaResult:
    """Global gamma index (Low et al. 1998) of ``evaluated`` against ``reference`` on one grid, with
    pymedphys' search.

    ``spacing_mm`` in the arrays' axis order; ``dose_percent`` of ``normalization_gy`` (default: the reference
    maximum) and ``distance_mm`` are the criteria; voxels whose reference dose is below ``cutoff_percent`` of
    the normalization are not evaluated (NaN). ``interp_fraction`` sets the search step DTA / interp_fraction;
    the search reaches DTA * ``max_gamma``, so the pass rate does not depend on ``max_gamma`` >= 1.
    ``device`` defaults to the reference tensor's (CPU for numpy input). ``threads``: CPU worker threads
    (default ``torch.get_num_threads()``; see the module docstring); torch's thread count is unchanged after.
    ``pass_only`` (like pymedphys' ``skip_once_passed``): only decide pass / fail, much faster; the pass rate
    and which voxels pass are exact, but ``gamma`` then holds an upper bound (<= 1) where a voxel passes and
    a value above 1 where it fails, not gamma itself.
    """
    if device is None:
        device = reference_dose_gy.device if isinstance(reference_dose_gy, torch.Tensor) else "cpu"
    device = torch.device(device)
    threads = torch.get_num_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads}")
    with _one_intra_op_thread() if device.type == "cpu" else contextlib.nullcontext():
        return _gamma_index(reference_dose_gy, evaluated_dose_gy, spacing_mm, device, threads, dose_percent,
                            distance_mm, cutoff_percent, normalization_gy, max_gamma, interp_fraction,
                            chunk_elements, shells_per_band, pass_only)


def _gamma_index(
    reference_dose_gy: np.ndarray | torch.Tensor,
    evaluated_dose_gy: np.ndarray | torch.Tensor,
    spacing_mm: Sequence[float],
    device: torch.device,
    threads: int,
    dose_percent: float,
    distance_mm: float,
    cutoff_percent: float,
    normalization_gy: float | None,
    max_gamma: float,
    interp_fraction: int,
    chunk_elements: int,
    shells_per_band: int,
    pass_only: bool,
) -> GammaResult:
    """``gamma_index`` with the device and threads resolved (torch already on one intra-op thread on CPU)."""
    ref = _as_tensor("reference_dose_gy", reference_dose_gy, device)
    ev = _as_tensor("evaluated_dose_gy", evaluated_dose_gy, device)
    if ev.shape != ref.shape:
        raise ValueError(
            f"evaluated_dose_gy has shape {tuple(ev.shape)}, expected the reference's {tuple(ref.shape)}"
        )
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != ref.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"spacing_mm must hold {ref.ndim} positive numbers (one per axis), got {list(spacing_mm)}"
        )
    for name, value in (("dose_percent", dose_percent), ("distance_mm", distance_mm)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive and finite, got {value}")
    if not (math.isfinite(max_gamma) and max_gamma >= 1):
        raise ValueError(
            f"max_gamma must be finite and >= 1 (the search must reach the DTA), got {max_gamma}"
        )
    if not (0 <= cutoff_percent < 100):
        raise ValueError(f"cutoff_percent must be in [0, 100), got {cutoff_percent}")
    if int(interp_fraction) != interp_fraction or interp_fraction < 1:
        raise ValueError(f"interp_fraction must be a positive integer, got {interp_fraction}")
    norm_gy = float(ref.max()) if normalization_gy is None else float(normalization_gy)
    if not (math.isfinite(norm_gy) and norm_gy > 0):
        raise ValueError(f"normalization dose must be positive, got {norm_gy} Gy"
                         + (" (the reference dose is zero everywhere)" if normalization_gy is None else ""))

    # flat indices of the evaluated voxels, in C order
    evaluated = torch.nonzero(ref.reshape(-1) >= cutoff_percent / 100.0 * norm_gy).squeeze(1)
    gamma_map = torch.full(ref.shape, float("nan"), dtype=torch.float32, device=device)
    count = evaluated.numel()
    pass_rate = float("nan")
    if count:
        # pass-only stops at the DTA; up to there, max_gamma does not change the offsets
        plan = gamma_search.search_plan(spacing, float(distance_mm), 1.0 if pass_only else float(max_gamma),
                                        int(interp_fraction), int(shells_per_band))
        gamma2 = gamma_search.min_gamma2(ref, ev, evaluated, plan, dose_percent / 100.0 * norm_gy,
                                         int(chunk_elements), threads, bool(pass_only))
        # before capping, so max_gamma = 1 fails nothing new
        pass_rate = float((gamma2 <= 1).float().mean()) * 100.0
        gamma_map.view(-1).index_copy_(0, evaluated, gamma2.sqrt().clamp_(max=max_gamma))
    if not isinstance(reference_dose_gy, torch.Tensor):
        gamma_map = gamma_map.cpu().numpy()
    return GammaResult(gamma=gamma_map, pass_rate_percent=pass_rate, evaluated_voxels=count)
