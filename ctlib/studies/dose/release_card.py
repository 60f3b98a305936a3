"""The model card of the released dose model (``MODEL_CARD.md``), after Mitchell et al. 2019.

``render_model_card`` takes the card's fields: architecture, training data and split, archived run id,
steps, device, wall time, held-out metrics with their protocol, precision and inference settings. What
only a person knows (data, split, metrics, protocol) comes in as a ``DoseCard`` (a dict or a JSON / YAML
file); a field left out is written as *not given at export* and listed by ``DoseCard.missing``, so a card
never invents numbers. ``render_for_release`` fills the rest from the exported bundles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctlib import release
from ctlib.config import ConfigDict
from ctlib.models import run_checkpoint
from ctlib.runs import record

NOT_GIVEN = "*not given at export*"
REQUIRED = ("training_data", "split", "metrics", "protocol")
INTENDED_USE = ("research on knowledge-based dose prediction for head-and-neck radiotherapy (OpenKBP); "
                "not for clinical use.")



@dataclasses.dataclass
class DoseCard(ConfigDict):
    """What a person states about a dose release; every field optional, unknown keys refused."""

    title: str = ""
    summary: str = ""
    training_data: str = ""  # which patients (dataset, count, spacing), from which preprocessing run
    split: str = ""  # patient-wise split: counts, seed, manifest
    run_id: str = ""  # the archived training run(s); default: the bundles' run ids
    steps: int | None = None  # optimizer steps, when the checkpoint does not say
    device: str = ""  # overrides the run record's
    wall_time: str = ""  # training wall time; overrides the run record's duration
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # held-out results, name -> value
    protocol: str = ""  # how the metrics were computed (patients, split, masks, gamma settings)
    intended_use: str = ""
    limitations: str = ""
    notes: str = ""

    @property
    def missing(self) -> list[str]:
        """The fields a card should state that were not given."""
        return [name for name in REQUIRED if not getattr(self, name)]


def card_info(card: DoseCard | dict[str, Any] | str | Path | None) -> DoseCard:
    """A ``DoseCard`` from itself, a dict, or a ``.json`` / ``.yaml`` file; ``None`` gives an empty one."""
    return release.card_fields(card, DoseCard)


def _value(text: Any) -> str:
    return str(text) if text not in (None, "", [], {}) else NOT_GIVEN


def duration(seconds: Any) -> str:
    """``"2 h 05 min"`` / ``"12 min 30 s"``; empty for a missing value."""
    if not isinstance(seconds, int | float):
        return ""
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def render_model_card(
    *,
    name: str,
    title: str,
    summary: str,
    architecture: Sequence[str],
    training_data: str,
    split: str,
    run_id: str,
    steps: Any,
    device: str,
    wall_time: str,
    metrics: dict[str, Any],
    protocol: str,
    precision: dict[str, Any],
    inference: Sequence[str],
    usage: Sequence[str],
    intended_use: str = "",
    limitations: str = "",
    notes: str = "",
) -> str:
    """``MODEL_CARD.md``: summary, architecture, training (data, split, run, steps, device, wall time),
    held-out metrics with their protocol, precision, inference, use, limitations, files."""
    measured = precision.get("max_abs_diff")
    precision_line = f"**{precision['dtype']}**: {precision['reason']}"
    if measured is not None:
        precision_line += (f" (max |diff| {measured:.4g} {precision['unit']}, mean "
                           f"{precision['mean_abs_diff']:.4g}; {precision['metric']}; test input: "
                           f"{precision['test_input']})")
    table = (["| metric | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in metrics.items())]
             if metrics else [NOT_GIVEN])
    lines = [
        f"# {title}", "", summary, "",
        "## Architecture", "", *architecture, "",
        "## Training", "",
        f"- Data: {_value(training_data)}",
        f"- Split: {_value(split)}",
        f"- Archived run: {_value(run_id)} (`experiments/<run id>/`, `ctlib archive RUN_ID`)",
        f"- Steps: {_value(steps)}",
        f"- Device: {_value(device)}",
        f"- Wall time: {_value(wall_time)}", "",
        "## Held-out evaluation", "",
        f"Protocol: {_value(protocol)}", "",
        *table, "",
        "## Precision", "", precision_line, "",
        "## Inference", "", *inference, "",
        "## Use", "", *usage, "",
        f"Intended use: {intended_use or INTENDED_USE}", "",
        f"Limitations: {_value(limitations)}", "",
        *([f"Notes: {notes}", ""] if notes else []),
        "## Files", "",
        "`model.safetensors` (weights), `config.json` (everything needed to rebuild the model), this card,",
        "and `SHA256SUMS`, which the loader checks before reading any file (`sha256sum -c SHA256SUMS`).", "",
    ]
    return "\n".join(lines)


def _parameters(module: Any) -> str:
    count = sum(v.numel() for v in module.state_dict().values())
    return f"{count / 1e6:.2f} M parameters" if count >= 10_000 else f"{count} parameters"


def architecture_lines(model_config: dict[str, Any], module: Any, normalization: dict[str, Any]) -> list[str]:
    """What the network is and what it sees, from its recorded config."""
    net = model_config["net"]
    if model_config["kind"] == "unet":
        first = (f"FiLM-conditioned 3D residual U-Net (`ctlib.models.dose_unet`, MONAI blocks), channels "
                 f"{list(net['channels'])}, {net.get('num_res_units')} conv(s) per unit, {net.get('norm')} "
                 f"norm, FiLM MLP width {net.get('film_hidden')}; loss `{model_config['loss']}`; "
                 f"{_parameters(module)}")
    else:
        first = (f"conditional latent diffusion (`ctlib.studies.dose.diffusion`, MONAI DiffusionModelUNet), "
                 f"channels {list(net['channels'])}; {_parameters(module)}")
    low, high = normalization.get("low_hu"), normalization.get("high_hu")
    window = f"HU window {normalization.get('name')!r} [{low}, {high}]"
    factor = int(model_config.get("resolution_factor", 1))
    return [
        f"- Network: {first}",
        f"- Inputs: CT ({window} -> [-1, 1]), signed distance of each of {len(model_config['roi_names'])} "
        f"structures / {normalization.get('sdf_clip_mm')} mm"
        + (", possible-dose mask" if normalization.get("include_pdm", True) else "")
        + "; constraint vector (prescriptions, OAR limits, presence flags) by FiLM",
        f"- Structures: {', '.join(model_config['roi_names'])}",
        *([f"- Coarse-to-fine: inputs average-pooled x{factor}, dose upsampled back"] if factor > 1 else []),
    ]


def run_facts(run: Any) -> dict[str, Any]:
    """Notebook, parameter set, device, duration, git commit of the run that wrote a checkpoint."""
    path = getattr(run, "path", None)
    folder = run_checkpoint.run_folder(Path(path)) if path is not None else None
    if folder is None or not (folder / "run.json").is_file():
        return {}
    rec = record.read_json_object(folder / "run.json")
    device = rec.get("device") or {}
    where = (f"{device.get('device_name') or 'CUDA GPU'} x{device.get('cuda_device_count') or 1}"
             if device.get("cuda_available") else
             f"CPU ({device.get('cpu_count')} cores)" if device else "")
    git = rec.get("git") or {}
    return {"run_id": rec.get("run_id") or folder.name, "notebook": rec.get("notebook"),
            "parameter_set": rec.get("parameter_set"), "git_commit": git.get("commit"),
            "device": where, "duration_s": rec.get("duration_s")}


def render_for_release(
    info: DoseCard, *, name: str, members: Sequence[Any], records: Sequence[dict[str, Any]],
    spacing_mm: Sequence[float], precision: dict[str, Any],
) -> str:
    """The card of a release of ``members`` (bundles) with their config ``records``."""
    first = records[0]
    facts = first.get("run") or {}
    architecture = [f"Ensemble of {len(members)} models, voxel-wise mean of their doses:", ""] \
        if len(members) > 1 else []
    for m, rec in zip(members, records, strict=True):
        if len(members) > 1:
            architecture.append(f"Member `{rec['run_id']}` ({rec['variant']}):")
        architecture += architecture_lines(rec["model_config"], m.module, rec["normalization"])
    inference = [f"- Trained at voxel spacing (dz, dy, dx) = ({', '.join(f'{s:g}' for s in spacing_mm)}) mm; "
                 "`ctlib dose predict` resamples DICOM CT to it (CT linear, masks nearest) and the dose back"]
    for rec in records:
        options = rec["inference"]
        window = options.get("window_options", {})
        inference.append(
            f"- `{rec['run_id']}`: sliding windows {window.get('roi_size')}, overlap "
            f"{window.get('overlap')}, {window.get('blend')} blending; "
            + ", ".join(f"{k} {v}" for k, v in options.items() if k != "window_options"))
    usage = ["```python", "from ctlib.studies.dose import release_model",
             f"model = release_model.load_dose_release({name!r})  # DoseModelBundle (checksums checked)",
             "dose_gy = model.predict(dose_patient)", "```", "",
             "Command line: `ctlib dose predict PATIENT.npz --out DIR` (an OpenKBP patient, or a DICOM-RT "
             "folder: CT series + RTSTRUCT)" + ("" if name == "dose_unet" else f" `--model weights/{name}`")]
    steps = info.steps if info.steps is not None else (
        first.get("step") if len(records) == 1 else [r.get("step") for r in records])
    return render_model_card(
        name=name,
        title=info.title or f"OpenKBP dose prediction ({name})",
        summary=info.summary or f"Release `{name}` of the ctlib dose study: predicts the planned dose (Gy) "
                                "of a head-and-neck patient from its CT and structures.",
        architecture=architecture, training_data=info.training_data, split=info.split,
        run_id=info.run_id or ", ".join(f"`{r['run_id']}`" for r in records), steps=steps,
        device=info.device or facts.get("device", ""),
        wall_time=info.wall_time or duration(facts.get("duration_s")),
        metrics=info.metrics, protocol=info.protocol, precision=precision, inference=inference, usage=usage,
        intended_use=info.intended_use, limitations=info.limitations, notes=info.notes,
    )
