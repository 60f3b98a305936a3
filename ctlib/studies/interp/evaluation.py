"""Every slice interpolator on the same simulated thick/thin pair, scored by one protocol.

Used by the evaluation notebook (``slice_interp/2026-11-23_04_evaluate``) and the quality benchmark
(``bench/slice_interp_quality.py``). For a thin volume and a factor: thick slices are simulated
(``thick_slices.thick_thin_pair``), then linear and cubic z-interpolation always run, the regressor
(``ctlib.studies.interp.regression``) and latent diffusion (``ctlib.studies.interp.pipeline``) run at the
factor they were trained for; ``ctlib.studies.interp.scoring.evaluate`` scores each estimate (synthesized
slices only, body mask, FULL and soft-tissue windows, per-slice SSIM, slab residual).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ctlib.io.volume import Volume
from ctlib.studies.interp import pipeline, thick_slices
from ctlib.studies.interp import scoring as interpolation
from ctlib.studies.interp.bundle import Interpolator
from ctlib.studies.interp.regression import RegressorBundle, interpolate_regression

CLASSIC = ("linear", "cubic")
METHODS = ("linear", "cubic", "regressor", "diffusion", "diffusion, no DC")


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How latent diffusion samples a whole volume (see ``pipeline.interpolate_volume``)."""

    sampler: str = "ddim"
    steps: int = 20
    eta: float = 0.0
    samples: int = 1
    window_depth: int = 48
    chunk: int = 16
    seed: int = 0
    bf16: bool = False


@dataclasses.dataclass
class Comparison:
    """One volume at one factor: the pair, every method's thin estimate (HU), and diffusion's extras."""

    pair: thick_slices.ThickThinPair
    estimates: dict[str, Volume]
    diffusion: pipeline.InterpolationResult | None = None
    protocol: interpolation.Protocol = interpolation.DEFAULT

    def scores(self) -> list[dict[str, Any]]:
        """One row per method: the protocol's PSNR (both windows), SSIM and slab residual."""
        masks = interpolation.BodyMasks.of(self.pair, self.protocol)
        return [{"factor": self.pair.factor, "method": method,
                 **interpolation.evaluate(estimate, self.pair, self.protocol, masks)}
                for method, estimate in self.estimates.items()]

    def consistency(self) -> dict[str, Any] | None:
        """Diffusion's slab residual before and after data consistency, windows and time (None without it)."""
        result = self.diffusion
        if result is None:
            return None
        return {"factor": self.pair.factor, "residual_before_hu": result.residual_before_hu,
                "residual_after_hu": result.residual_after_hu, "windows": len(result.windows),
                "seconds": result.seconds, "seconds_per_step": result.seconds_per_step}


def compare_methods(
    volume: Volume,
    factor: int,
    *,
    mode: thick_slices.ThickMode | None = None,
    protocol: interpolation.Protocol = interpolation.DEFAULT,
    interpolator: Interpolator | None = None,
    regressor: RegressorBundle | None = None,
    sampling: SamplingOptions = SamplingOptions(),
) -> Comparison:
    """Simulate thick slices of ``volume`` at ``factor`` and interpolate them back with every method that
    applies.

    ``protocol`` fixes the thick-slice model, the body mask and the soft window (``mode``, when given,
    replaces its thick-slice mode). Raises ``ValueError`` when the volume is too short for the factor.
    """
    if mode is not None:
        protocol = dataclasses.replace(protocol, mode=mode)
    pair = protocol.pair(volume, factor)
    n_thin = pair.thin.shape[0]
    estimates: dict[str, Volume] = {
        method: thick_slices.upsample_z(pair.thick, factor, method, n_thin=n_thin) for method in CLASSIC
    }
    if regressor is not None and factor == regressor.factor:
        estimates["regressor"] = interpolate_regression(pair.thick, regressor, factor, n_thin)
    result = None
    if interpolator is not None and factor == interpolator.spec.factor:
        result = pipeline.interpolate_volume(
            pair.thick,
            interpolator,
            factor=factor,
            sampler=sampling.sampler,
            steps=sampling.steps,
            eta=sampling.eta,
            samples=sampling.samples,
            window_depth=sampling.window_depth,
            seed=sampling.seed,
            chunk=sampling.chunk,
            bf16=sampling.bf16,
            n_thin=n_thin,
            progress=False,
            return_raw=True,
        )
        estimates["diffusion"], estimates["diffusion, no DC"] = result.mean, result.raw
    return Comparison(pair=pair, estimates=estimates, diffusion=result, protocol=protocol)
