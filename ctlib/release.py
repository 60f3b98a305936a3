"""Released models: safetensors weights, a JSON config, a model card and their SHA-256 sums; never a pickle.

A release is a folder ``<weights>/<name>/`` (``ctlib.paths.weights_dir()``) holding

- ``model.safetensors``: the tensors (safetensors format), float16 or float32 as the exporter measured;
- ``config.json``: everything needed to rebuild the model (``format``, ``kind``, ``dtype``, the
  architecture configs, normalization, ...), plain JSON;
- ``MODEL_CARD.md``: architecture, training data, run, held-out metrics and their protocol;
- ``SHA256SUMS``: one ``<sha256>  <file>`` line per file above (``sha256sum -c SHA256SUMS`` checks it).

``read_release`` reads each file's bytes once, checks their sum, and only then parses them (JSON and
safetensors), so a modified or corrupt file is refused by name before anything is built from it.
Float16 weights are kept only when the outputs they give stay within a stated tolerance of the float32
ones on a test input (``decide_precision``); the decision and its numbers go into ``config.json``.

This module imports no torch at import time: the command line checks a release without loading torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctlib import paths
from ctlib.atomic import atomic_path
from ctlib.errors import CTInputError

if TYPE_CHECKING:
    import numpy as np
    import torch

FORMAT = "ctlib.release"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "MODEL_CARD.md"
SUMS_FILE = "SHA256SUMS"
RELEASE_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
DEFAULT_BUDGET_MB = 25.0  # all released models together (issue 12)
MB = 1_000_000  # budgets and sizes in decimal megabytes
_SUM_LINE = re.compile(r"([0-9a-f]{64}) [ *](\S+)")


class BudgetExceeded(ValueError):
    """The releases would make the weights folder larger than its budget; nothing was written."""


# ------------------------------------------------------------------------------------ precision
@dataclasses.dataclass
class PrecisionDecision:
    """Float16 or float32 weights, and the measurement behind the choice (stored in ``config.json``)."""

    dtype: str  # "float16" or "float32"
    reason: str
    metric: str  # what was compared, in words
    unit: str
    tolerance: float  # the largest |difference| accepted for float16
    max_abs_diff: float | None = None  # of outputs with float16-rounded vs float32 weights
    mean_abs_diff: float | None = None
    psnr_db: float | None = None  # of the float16 outputs against the float32 ones (peak: ``peak``)
    peak: float | None = None
    test_input: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def to_dtype(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Every floating tensor cast to ``dtype`` (``"float16"`` / ``"float32"``), others unchanged; contiguous
    copies on the CPU (safetensors stores neither views nor shared storage)."""
    import torch

    target = {"float16": torch.float16, "float32": torch.float32}[dtype]
    return {k: (v.to(target) if v.is_floating_point() else v).detach().cpu().contiguous().clone()
            for k, v in state.items()}


def fp16_rounded(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 weights a float16 release gives back when loaded: rounded to float16 and back."""
    return to_dtype(to_dtype(state, "float16"), "float32")


def fp16_out_of_range(state: dict[str, torch.Tensor]) -> list[str]:
    """Tensors that float16 cannot hold: a finite value becomes infinite, or a nonzero tensor becomes zero."""
    import torch

    bad = []
    for name, value in state.items():
        if not value.is_floating_point():
            continue
        half = value.to(torch.float16)
        overflow = bool((torch.isfinite(value) & ~torch.isfinite(half)).any())
        vanished = bool(value.abs().max() > 0) and not bool(half.abs().max() > 0)
        if overflow or vanished:
            bad.append(name)
    return bad


def decide_precision(
    state: dict[str, torch.Tensor],
    evaluate: Callable[[dict[str, torch.Tensor]], np.ndarray],
    *,
    tolerance: float,
    metric: str,
    unit: str,
    peak: float | None = None,
    test_input: str = "",
) -> PrecisionDecision:
    """Float16 weights when ``max |evaluate(fp16-rounded) - evaluate(fp32)| <= tolerance``, else float32.

    ``evaluate`` runs the model with the given weights on a fixed test input (same seed both times) and
    returns its output, e.g. a volume in HU; ``peak`` (e.g. the HU window width) gives the PSNR.
    """
    import numpy as np

    common = {"metric": metric, "unit": unit, "tolerance": float(tolerance), "peak": peak,
              "test_input": test_input}
    out_of_range = fp16_out_of_range(state)
    if out_of_range:
        return PrecisionDecision("float32", f"float16 cannot hold {out_of_range[:3]}", **common)
    reference = np.asarray(evaluate(to_dtype(state, "float32")), dtype=np.float64)
    rounded = np.asarray(evaluate(fp16_rounded(state)), dtype=np.float64)
    diff = np.abs(rounded - reference)
    max_abs, mean_abs = float(diff.max()), float(diff.mean())
    rmse = float(np.sqrt((diff**2).mean()))
    psnr = None if peak is None else (math.inf if rmse == 0 else float(20 * np.log10(peak / rmse)))
    measured = {"max_abs_diff": max_abs, "mean_abs_diff": mean_abs,
                "psnr_db": None if psnr is None or math.isinf(psnr) else round(psnr, 3)}
    if not math.isfinite(max_abs) or max_abs > tolerance:
        reason = f"float16 weights change the output by up to {max_abs:.4g} {unit} > {tolerance:g} {unit}"
        return PrecisionDecision("float32", reason, **common, **measured)
    reason = f"float16 weights change the output by at most {max_abs:.4g} {unit} <= {tolerance:g} {unit}"
    return PrecisionDecision("float16", reason, **common, **measured)


# ------------------------------------------------------------------------------------- writing
@dataclasses.dataclass
class Release:
    """One model to release: its folder name, tensors (already in the chosen dtype), config and card."""

    name: str
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]  # kind-specific keys; ``format``, ``format_version`` and ``dtype`` are added
    card: str
    report: dict[str, Any] = dataclasses.field(default_factory=dict)  # for the exporter's report, not written

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(f"release name {self.name!r}: use letters, digits, '.', '_' and '-' only")
        if "kind" not in self.config:
            raise ValueError(f"release {self.name!r}: config needs a 'kind'")

    def files(self) -> dict[str, bytes]:
        """The bytes of each file of the release folder, ``SHA256SUMS`` included."""
        from safetensors.torch import save

        floats = [v for v in self.tensors.values() if v.is_floating_point()]
        dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in floats})
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name,
                  "dtype": dtypes[0] if len(dtypes) == 1 else dtypes, **self.config}
        files = {
            WEIGHTS_FILE: save(self.tensors, metadata={"format": FORMAT, "kind": str(self.config["kind"])}),
            CONFIG_FILE: (json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n").encode(),
            CARD_FILE: self.card.encode(),
        }
        files[SUMS_FILE] = "".join(f"{sha256(data)}  {name}\n" for name, data in files.items()).encode()
        return files


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder``."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def released_names(weights: str | os.PathLike) -> list[str]:
    """Names of the release folders (those with a ``SHA256SUMS``) under ``weights``."""
    root = Path(weights)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / SUMS_FILE).is_file())


def write_releases(
    out_dir: str | os.PathLike, releases: Sequence[Release], *, budget_mb: float = DEFAULT_BUDGET_MB
) -> dict[str, Any]:
    """Write each release to ``out_dir/<name>/`` (atomically, folder by folder) within a size budget.

    The budget counts these releases plus the other releases already in ``out_dir`` (a release of the
    same name is replaced); over budget, ``BudgetExceeded`` is raised before anything is written.
    Returns the sizes: ``{"models": {name: {file: bytes, "total_mb"}}, "total_mb", "budget_mb"}``.
    """
    out = Path(out_dir)
    payloads = {r.name: r.files() for r in releases}
    if len(payloads) != len(releases):
        raise ValueError(f"release names repeat: {[r.name for r in releases]}")
    models: dict[str, dict[str, Any]] = {}
    for item in releases:
        sizes: dict[str, Any] = {file: len(data) for file, data in payloads[item.name].items()}
        models[item.name] = {**sizes, "total_mb": round(sum(sizes.values()) / MB, 3), **item.report}
    for name in released_names(out):
        if name not in payloads:
            models[name] = {"total_mb": round(folder_bytes(out / name) / MB, 3), "kept": True}
    total_mb = sum(m["total_mb"] for m in models.values())
    report = {"models": models, "total_mb": round(total_mb, 3), "budget_mb": float(budget_mb)}
    if total_mb > budget_mb:
        listing = ", ".join(f"{n} {m['total_mb']:.1f} MB" for n, m in sorted(models.items()))
        raise BudgetExceeded(
            f"{out}: the released models would take {total_mb:.1f} MB ({listing}), over the budget of "
            f"{budget_mb:g} MB: nothing written (smaller models, float16, or a larger --budget-mb)"
        )
    for name, files in payloads.items():
        with atomic_path(out / name) as tmp:
            tmp.mkdir(parents=True)
            for file, data in files.items():
                (tmp / file).write_bytes(data)
    return report


def write_sums(folder: str | os.PathLike) -> Path:
    """Rewrite ``SHA256SUMS`` of a release folder from its files (after a deliberate edit of the card)."""
    folder = Path(folder)
    lines = "".join(f"{sha256((folder / f).read_bytes())}  {f}\n" for f in RELEASE_FILES)
    path = folder / SUMS_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(lines)
    return path


# ------------------------------------------------------------------------------------- reading
@dataclasses.dataclass
class LoadedRelease:
    """A release read and checked: its config (plain JSON) and tensors (as stored: float16 or float32)."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def release_dir(name_or_dir: str | os.PathLike) -> Path:
    """The folder named: a bare name is a release under ``paths.weights_dir()``; with a ``/``, a path."""
    text = os.fspath(name_or_dir)
    if os.sep in text or "/" in text or text.startswith((".", "~")):
        return Path(text).expanduser()
    return paths.weights_dir() / text


def check_present(folder: str | os.PathLike) -> Path:
    """``CTInputError`` unless ``folder`` holds the files of a release (no file is read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CTInputError(folder, "no such folder")
    missing = [f for f in (SUMS_FILE, CONFIG_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
    if missing:
        raise CTInputError(folder, f"incomplete release: {', '.join(missing)} missing")
    return folder


def read_sums(folder: Path) -> dict[str, str]:
    """``{file: sha256}`` from ``folder/SHA256SUMS``; ``CTInputError`` naming it when malformed."""
    path = folder / SUMS_FILE
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        match = _SUM_LINE.fullmatch(line.strip())
        if not match:
            raise CTInputError(path, f"line {number} is not '<sha256>  <file>': modified or corrupt")
        sums[match.group(2)] = match.group(1)
    return sums


def checked_bytes(folder: Path, file: str, sums: dict[str, str]) -> bytes:
    """The bytes of ``folder/file`` once their SHA-256 matches ``SHA256SUMS``; else ``CTInputError``."""
    path = folder / file
    if file not in sums:
        raise CTInputError(path, f"not listed in {SUMS_FILE}: the release was modified or is incomplete")
    if not path.is_file():
        raise CTInputError(path, f"missing, though listed in {SUMS_FILE}")
    data = path.read_bytes()
    if sha256(data) != sums[file]:
        raise CTInputError(
            path, f"SHA-256 differs from {SUMS_FILE}: the file was modified or is corrupt "
            "(restore it from git, or export the release again)"
        )
    return data


def verify_release(folder: str | os.PathLike) -> list[str]:
    """Check the sum of every file listed in ``SHA256SUMS`` (the card included); the files checked."""
    folder = check_present(folder)
    sums = read_sums(folder)
    for file in sorted(sums):
        checked_bytes(folder, file, sums)
    return sorted(sums)


def read_release(name_or_dir: str | os.PathLike, kind: str | None = None) -> LoadedRelease:
    """Read a release: checksums first, then ``config.json`` (JSON) and the tensors (safetensors).

    ``kind`` (e.g. ``"slice_interp.latent_diffusion"``) must match the config's when given. Every problem
    is a one-line ``CTInputError`` naming the file; nothing is unpickled.
    """
    from safetensors.torch import load

    folder = check_present(release_dir(name_or_dir))
    sums = read_sums(folder)
    config_bytes = checked_bytes(folder, CONFIG_FILE, sums)
    weights_bytes = checked_bytes(folder, WEIGHTS_FILE, sums)
    config_path = folder / CONFIG_FILE
    try:
        config = json.loads(config_bytes)
    except (ValueError, UnicodeDecodeError) as err:
        raise CTInputError(config_path, f"not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CTInputError(config_path, f"not a ctlib release: expected format {FORMAT!r}, found {found!r}")
    if not isinstance(config.get("format_version"), int) or config["format_version"] > FORMAT_VERSION:
        raise CTInputError(config_path, f"release format version {config.get('format_version')!r} is not one "
                           f"this ctlib reads (<= {FORMAT_VERSION})")
    if kind is not None and config.get("kind") != kind:
        raise CTInputError(config_path, f"a release of kind {config.get('kind')!r}, expected {kind!r}")
    try:
        tensors = load(weights_bytes)
    except Exception as err:  # safetensors raises its own SafetensorError for a bad header
        problem = f"not readable safetensors ({type(err).__name__}: {err})"
        raise CTInputError(folder / WEIGHTS_FILE, problem) from None
    return LoadedRelease(path=folder, config=config, tensors=tensors)


# ------------------------------------------------------------------------------------ model cards
def card_fields(card: Any, cls: type) -> Any:
    """The card-fields dataclass ``cls`` (a ``ConfigDict``) from an instance, a dict, or a ``.json`` /
    ``.yaml`` file; ``None`` gives an empty one (unknown keys are refused by ``cls.from_dict``)."""
    if card is None:
        return cls()
    if isinstance(card, cls):
        return card
    if isinstance(card, str | Path):
        text = Path(card).read_text()
        if str(card).endswith((".yaml", ".yml")):
            import yaml

            card = yaml.safe_load(text) or {}
        else:
            card = json.loads(text)
    if not isinstance(card, dict):
        raise ValueError(f"a model card is a mapping of {cls.__name__} fields, got {type(card).__name__}")
    return cls.from_dict(dict(card))
