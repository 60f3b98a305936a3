"""The model card of a released slice-interpolation model (``MODEL_CARD.md``), after Mitchell et al. 2019.

What the exporter knows it fills in: architecture and normalization from the checkpoint, run ids,
notebook, parameter set, steps, device, training time and git commit from the run records, and the
float16 decision. What only a person knows comes in as a ``CardInfo`` (a dict or a JSON / YAML file):
training data and split, held-out metrics and the protocol that produced them, notes. A field left out
is written as *not given at export* and listed by ``CardInfo.missing``, so a card never invents numbers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ctlib import release
from ctlib.config import ConfigDict
from ctlib.models import run_checkpoint

NOT_GIVEN = "*not given at export*"
REQUIRED = ("training_data", "split", "metrics", "protocol")
INTENDED_USE = "research on thick-to-thin CT slice interpolation; not for clinical use."


@dataclasses.dataclass
class CardInfo(ConfigDict):
    """What a person states about a release; every field optional, unknown keys refused."""

    title: str = ""
    summary: str = ""
    training_data: str = ""  # which volumes (dataset, count, spacing), from which preprocessing run
    split: str = ""  # patient-wise split: counts, seed, manifest
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # held-out results, name -> value
    protocol: str = ""  # how the metrics were computed (slices scored, mask, HU window, volumes)
    steps: int | None = None  # optimizer steps, when the checkpoint does not say
    device: str = ""  # overrides the run record's
    training_time: str = ""  # overrides the run record's duration
    intended_use: str = ""
    limitations: str = ""
    notes: str = ""

    @property
    def missing(self) -> list[str]:
        """The fields a card should state that were not given."""
        return [name for name in REQUIRED if not getattr(self, name)]


def card_info(card: CardInfo | dict[str, Any] | str | Path | None) -> CardInfo:
    """A ``CardInfo`` from itself, a dict, or a ``.json`` / ``.yaml`` file; ``None`` gives an empty one."""
    return release.card_fields(card, CardInfo)


def run_facts(checkpoint: str | Path) -> dict[str, Any]:
    """Run id, notebook, parameter set, status, git commit, device and duration of the run that wrote
    ``checkpoint`` (from its ``run.json``); ``{}`` for a loose checkpoint file."""
    folder = run_checkpoint.run_folder(Path(checkpoint))
    record_path = None if folder is None else folder / "run.json"
    if record_path is None or not record_path.is_file():
        return {}
    try:
        record = json.loads(record_path.read_text())
    except ValueError:
        return {}
    device = record.get("device") or {}
    if device.get("cuda_available"):
        where = f"{device.get('device_name') or 'CUDA GPU'} x{device.get('cuda_device_count') or 1}"
    elif device:
        where = f"CPU ({device.get('cpu_count')} cores, {device.get('hostname') or 'unknown host'})"
    else:
        where = ""
    git = record.get("git") or {}
    return {
        "run_id": record.get("run_id") or folder.name,
        "notebook": record.get("notebook"),
        "parameter_set": record.get("parameter_set"),
        "status": record.get("status"),
        "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"),
        "device": where,
        "duration_s": record.get("duration_s"),
    }


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _value(text: Any) -> str:
    return str(text) if text not in (None, "", [], {}) else NOT_GIVEN


def _runs_table(sources: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| role | run id | notebook | parameter set | git commit | device | time |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for role, facts in sources.items():
        commit = facts.get("git_commit") or ""
        commit = f"`{commit[:10]}`" + (" (dirty)" if facts.get("git_dirty") else "") if commit else ""
        run = facts.get("run_id") or facts.get("checkpoint", "")
        cells = [role, f"`{run}`", facts.get("notebook") or "", facts.get("parameter_set") or "", commit,
                 facts.get("device") or "", _duration(facts.get("duration_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _metrics(metrics: dict[str, Any]) -> list[str]:
    if not metrics:
        return [NOT_GIVEN]
    return ["| metric | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in metrics.items())]


def render(
    info: CardInfo,
    *,
    name: str,
    kind: str,
    title: str,
    architecture: list[str],
    sources: dict[str, dict[str, Any]],
    steps: int | None,
    precision: dict[str, Any],
    usage: list[str],
) -> str:
    """``MODEL_CARD.md``: summary, architecture, training (data, split, runs, steps, device, time),
    held-out metrics with their protocol, precision, use, limitations, files."""
    main = next(iter(sources.values()), {})
    measured = precision.get("max_abs_diff")
    precision_line = f"**{precision['dtype']}**: {precision['reason']}"
    if measured is not None:
        precision_line += (
            f" (max |diff| {measured:.4g} {precision['unit']}, mean {precision['mean_abs_diff']:.4g}, "
            f"PSNR {precision['psnr_db'] if precision['psnr_db'] is not None else 'inf'} dB; "
            f"{precision['metric']}; test input: {precision['test_input']})"
        )
    lines = [
        f"# {info.title or title}", "",
        info.summary or f"Release `{name}` ({kind}) of the ctlib slice-interpolation study.", "",
        "## Architecture", "", *architecture, "",
        "## Training", "",
        f"- Data: {_value(info.training_data)}",
        f"- Split: {_value(info.split)}",
        f"- Steps: {_value(info.steps if info.steps is not None else steps)}",
        f"- Device: {_value(info.device or main.get('device'))}",
        f"- Training time: {_value(info.training_time or _duration(main.get('duration_s')))}",
        "- Runs (archived with `ctlib archive RUN_ID` into `experiments/<run id>/`):", "",
        *_runs_table(sources), "",
        "## Held-out evaluation", "",
        f"Protocol: {_value(info.protocol)}", "",
        *_metrics(info.metrics), "",
        "## Precision", "", precision_line, "",
        "## Use", "", *usage, "",
        f"Intended use: {info.intended_use or INTENDED_USE}", "",
        f"Limitations: {_value(info.limitations)}", "",
        *([f"Notes: {info.notes}", ""] if info.notes else []),
        "## Files", "",
        "`model.safetensors` (weights), `config.json` (everything needed to rebuild the model), this card,",
        "and `SHA256SUMS`, which the loader checks before reading any file (`sha256sum -c SHA256SUMS`).", "",
    ]
    return "\n".join(lines)
