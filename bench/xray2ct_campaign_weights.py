"""The X-ray-to-CT campaign's trained weights: float16 safetensors, in parts a device call can bring back.

A device call brings back at most 8 files of at most 16 MiB, 64 MiB together. With the ``gpu`` sets the
diffusion denoiser has 45.4 M parameters (86.5 MiB in float16, 173 MiB in float32) and the deterministic
baseline 9.8 M (18.6 MiB), so both go as float16 whatever the measurement says: how much float16 changes
the output is still measured (``ctlib.release.decide_precision``: max |HU| difference on the first test
case, float16-rounded against float32 weights; the denoiser's output is scaled by half the window width)
and recorded. ``stage`` writes each model once into ``<runs>/xray2ct_weights/`` as
``NAME.safetensors.partN`` of at most PART_BYTES; ``deliver`` copies the parts not yet delivered into a
call's ``--out`` while they fit, so the two models come back over two calls.

Rebuild (the sum and the part list are in campaign.json)::

    cat NAME.safetensors.part* > NAME.safetensors && sha256sum NAME.safetensors
    model, metadata = load(Path("NAME.safetensors"))  # this module; float32 weights, eval mode
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_campaign import split_file  # noqa: E402  (bench/gpu_campaign.py)

from ctlib import release, runs  # noqa: E402
from ctlib.data import windows  # noqa: E402
from ctlib.studies.xray2ct import networks, normalization, pairs, run_kind  # noqa: E402

STAGING = "xray2ct_weights"  # folder in the runs folder, kept between the calls of a warm device
PART_BYTES = 10 * 2**20  # with 8 files of 64 MiB a call: 6 parts in the first call, 5 in the second
FORMAT = "ctlib.xray2ct.weights/1"
EXPORTS = {"xray2ct_baseline": "baseline", "xray2ct_diffusion": "diffusion"}  # file name: campaign step
FP16_TOLERANCE_HU = 5.0  # what the measurement is compared with (recorded; float16 is kept regardless)


def test_input(preprocess_dir: Path) -> tuple[np.ndarray, str]:
    """The views ``(1, V, rows, cols)`` of the first test case of a preprocessing run, and its name."""
    split = pairs.PairFile(preprocess_dir / "splits" / "test.h5")
    return split.drrs()[:1], f"test case {split.case_ids[0]} of {preprocess_dir.name}"


@torch.no_grad()
def output_hu(run: run_kind.X2CTRun, drrs: np.ndarray, seed: int = 0) -> np.ndarray:
    """What the precision is measured on: the baseline's volume ``(D, H, W)`` in HU, or the denoiser's
    prediction at ``t = T / 2`` on seeded noise, times half the window width (HU per model unit)."""
    device = next(run.model.parameters()).device
    views = torch.from_numpy(np.asarray(drrs, np.float32)).to(device)
    if run.spec is None:
        return normalization.to_hu(run.model(views)[:, 0].clamp(-1, 1), run.window)[0].cpu().numpy()
    noise = torch.randn((1, 1, *run.geometry.shape), generator=torch.Generator().manual_seed(seed))
    t = torch.full((1,), run.spec.num_train_timesteps // 2, dtype=torch.long, device=device)
    out = run.model(noise.to(device), t, views)[0, 0]
    return (out * run.window.width / 2).float().cpu().numpy()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def stage(run_dir: Path, name: str, staging: Path) -> dict[str, Any]:
    """Write the (EMA) weights of a training run as float16 ``name.safetensors`` parts into ``staging``;
    their record: run, step, precision measurement, bytes, sha256 of the whole file, parts."""
    from safetensors.torch import save_file

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # measure float32
    try:
        run = run_kind.X2CTRun.load(run_dir, map_location=device)
        weights = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
        drrs, described = test_input(runs.run_dir_of(str(run.preprocess_run_id)))

        def evaluate(state: dict[str, torch.Tensor]) -> np.ndarray:
            run.model.load_state_dict(state)
            return output_hu(run, drrs)

        decision = release.decide_precision(
            weights, evaluate, tolerance=FP16_TOLERANCE_HU, unit="HU", peak=run.window.width,
            metric="outputs with float16-rounded vs float32 weights", test_input=described,
        )  # fmt: skip
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    if decision.dtype != "float16":
        decision.reason = f"float16 for size (module docstring) although {decision.reason}"
        decision.dtype = "float16"
    metadata = {
        "format": FORMAT,
        "kind": run.kind,
        "config": json.dumps(run.config.to_dict()),
        "normalization": json.dumps(windows.normalization_record(run.window)),
        "spec": json.dumps(run.spec.to_dict() if run.spec else None),
        "run_id": run_dir.name,
        "preprocess_run_id": str(run.preprocess_run_id),
        "step": str(run.step),
        "weights": run.weights,
        "precision": json.dumps(decision.to_dict()),
    }
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / f"{name}.safetensors"
    save_file(release.to_dtype(weights, "float16"), str(path), metadata=metadata)
    record = {"run_id": run_dir.name, "step": run.step, "weights": run.weights, "dtype": "float16",
              "parameters_m": round(sum(v.numel() for v in weights.values()) / 1e6, 3),
              "precision": decision.to_dict(), "bytes": path.stat().st_size, "sha256": _sha256(path)}
    return {**record, "parts": split_file(path, PART_BYTES), "delivered": []}


def deliver(
    staged: dict[str, dict[str, Any]], staging: Path, out: Path, *, max_files: int, max_bytes: int
) -> list[str]:
    """Copy parts not yet delivered (in ``staged`` order) into ``out`` while ``out`` stays within
    ``max_files`` and ``max_bytes``; mark them delivered; the names copied. Stops at the first that does not
    fit, so parts arrive in order."""
    copied = []
    for record in staged.values():
        for part in record["parts"]:
            if part in record["delivered"]:  # came back with an earlier call
                continue
            files = [p for p in out.iterdir() if p.is_file()]
            size = (staging / part).stat().st_size
            if len(files) + 1 > max_files or sum(p.stat().st_size for p in files) + size > max_bytes:
                return copied
            shutil.copyfile(staging / part, out / part)
            record["delivered"].append(part)
            copied.append(part)
    return copied


def load(path: Path) -> tuple[networks.DeterministicX2CT | networks.DiffusionX2CT, dict[str, Any]]:
    """The model of a rebuilt ``NAME.safetensors`` (float32, eval mode) and its metadata (JSON fields
    parsed: ``config``, ``normalization``, ``spec``, ``precision``)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        raw = handle.metadata() or {}
        if raw.get("format") != FORMAT:
            raise ValueError(f"{path}: format {raw.get('format')!r}, expected {FORMAT!r}")
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
    metadata = {k: json.loads(v) if k in ("config", "normalization", "spec", "precision") else v
                for k, v in raw.items()}
    model = networks.build(networks.X2CTConfig.from_dict(metadata["config"]))
    model.load_state_dict(release.to_dtype(state, "float32"))
    return model.eval(), metadata
