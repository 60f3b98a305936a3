"""Checkpoint cases: files handed to ctlib's checkpoint loaders (``torch.load(weights_only=True)`` only).

Each case runs a loader in a fresh interpreter, the way a notebook or a CLI would: a ``CTInputError``
becomes one stderr line and exit 2, anything else escapes as a traceback (and fails the case). A
malicious pickle tries ``os.mkdir`` of a marker folder: it must be refused naming the blocked global
(not torch's advice to set ``weights_only=False``), and the marker must not exist afterwards.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from corpus.case import CTLIB, PYTHON, TORCH_RSS_MB, Case, Ctx, case, loads, refused

_CATCH = """
except CTInputError as err:
    print(err, file=sys.stderr)
    sys.exit(2)
"""
LOAD = (
    """import json, sys
from ctlib.checkpoint import load_checkpoint
from ctlib.errors import CTInputError
try:
    ckpt = load_checkpoint(sys.argv[1])"""
    + _CATCH
    + """print(json.dumps({"format": ckpt["format"], \
"format_version": ckpt["format_version"], "model_state": sorted(ckpt["model_state"])}))
"""
)
LOAD_VAE = (
    """import json, sys
from ctlib.errors import CTInputError
from ctlib.models.vae_run import VAERun
try:
    run = VAERun.load(sys.argv[1])"""
    + _CATCH
    + """print(json.dumps({"factor": run.factor}))
"""
)
TORCH = {"max_rss_mb": TORCH_RSS_MB, "timeout_s": 60.0}


class _Mkdir:
    """Pickles as a call of ``os.mkdir(marker)``: what a malicious checkpoint would run on load."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (self.marker,)


def save_valid(path: Path, **overrides: object) -> None:
    """A small valid ctlib checkpoint, with top-level keys replaced (``None`` drops one)."""
    import torch

    from ctlib import checkpoint

    checkpoint.save_checkpoint(
        path,
        model_state={"w": torch.ones(2, 2), "b": torch.zeros(2)},
        config={"model": {"channels": 4}},
        normalization={"window": [-1000, 1000]},
        rng_state=False,
        provenance_record={"ctlib_version": "corpus"},
    )
    if overrides:
        ckpt = torch.load(path, weights_only=True)
        for key, value in overrides.items():
            if value is None:
                ckpt.pop(key)
            else:
                ckpt[key] = value
        torch.save(ckpt, path)


def load(c: Ctx, path: Path, keywords: list[str], note: str, script: str = LOAD, **kw: object) -> Case:
    """The loader refuses ``path``, naming it."""
    return refused([PYTHON, "-c", script, c.rel(path)], [path.name], keywords, note, **{**TORCH, **kw})


# --- loads -----------------------------------------------------------------------------------------------


@case("checkpoint")
def case_valid(c: Ctx) -> Case:
    path = c.dir / "model.pt"
    save_valid(path)
    return loads(
        [PYTHON, "-c", LOAD, c.rel(path)],
        {"format": "ctlib.checkpoint", "format_version": 1, "model_state": ["b", "w"]},
        "a valid checkpoint written by save_checkpoint",
        **TORCH,
    )


# --- refused ---------------------------------------------------------------------------------------------


def malicious(c: Ctx, file: str, note: str, *, zip_format: bool = True) -> Case:
    import torch

    marker = c.rel(c.dir / "PWNED")
    path = c.dir / file
    torch.save(
        {"format": "ctlib.checkpoint", "model_state": _Mkdir(marker)},
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    return load(c, path, ["mkdir"], note, forbid=["weights_only=False"], absent=[marker])


@case("checkpoint")
def case_malicious_global(c: Ctx) -> Case:
    return malicious(c, "evil.pt", "a pickled call of os.mkdir: blocked, the global named")


@case("checkpoint")
def case_malicious_legacy_format(c: Ctx) -> Case:
    return malicious(c, "evil_legacy.pt", "the same in torch's legacy (non-zip) format", zip_format=False)


def plain_pickle(c: Ctx, protocol: int, keywords: list[str]) -> Case:
    marker = c.rel(c.dir / "PWNED")
    path = c.dir / f"evil_pickle_p{protocol}.pt"
    path.write_bytes(pickle.dumps({"model_state": _Mkdir(marker)}, protocol=protocol))
    return load(
        c,
        path,
        keywords,
        f"a bare pickle (protocol {protocol}) calling os.mkdir",
        forbid=["weights_only=False"],
        absent=[marker],
    )


@case("checkpoint")
def case_malicious_plain_pickle_p2(c: Ctx) -> Case:
    return plain_pickle(c, 2, ["mkdir"])


@case("checkpoint")
def case_malicious_plain_pickle_p4(c: Ctx) -> Case:
    return plain_pickle(c, 4, ["mkdir", "not a readable", "checkpoint"])


@case("checkpoint")
def case_truncated(c: Ctx) -> Case:
    path = c.dir / "cut.pt"
    save_valid(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return load(c, path, ["readable", "truncated", "corrupt"], "a checkpoint cut in half")


@case("checkpoint")
def case_zero_bytes(c: Ctx) -> Case:
    path = c.dir / "empty.pt"
    path.write_bytes(b"")
    return load(c, path, ["readable", "empty", "0 bytes"], "a zero-byte checkpoint")


@case("checkpoint")
def case_random_bytes(c: Ctx) -> Case:
    path = c.dir / "noise.pt"
    path.write_bytes(bytes(range(256)) * 16)
    return load(c, path, ["readable", "corrupt"], "4 KB of bytes that are no checkpoint")


@case("checkpoint")
def case_corrupt_zip_member(c: Ctx) -> Case:
    path = c.dir / "flipped.pt"
    save_valid(path)
    raw = bytearray(path.read_bytes())
    start = raw.index(b"data.pkl") + 40  # inside the pickle of the zip archive
    raw[start : start + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    return load(c, path, ["readable", "corrupt"], "64 zeroed bytes inside the pickled dict")


@case("checkpoint")
def case_not_a_dict(c: Ctx) -> Case:
    import torch

    path = c.dir / "tensor.pt"
    torch.save(torch.ones(3), path)
    return load(c, path, ["not a ctlib checkpoint", "format"], "a bare tensor")


@case("checkpoint")
def case_foreign_state_dict(c: Ctx) -> Case:
    import torch

    path = c.dir / "state_dict.pt"
    torch.save({"conv.weight": torch.ones(1, 1, 3, 3)}, path)
    return load(c, path, ["not a ctlib checkpoint", "format"], "a plain state_dict from another project")


@case("checkpoint")
def case_missing_keys(c: Ctx) -> Case:
    path = c.dir / "no_weights.pt"
    save_valid(path, model_state=None)
    return load(c, path, ["model_state"], "a ctlib checkpoint without model_state")


@case("checkpoint")
def case_future_version(c: Ctx) -> Case:
    path = c.dir / "future.pt"
    save_valid(path, format_version=99)
    return load(c, path, ["version"], "format_version 99")


@case("checkpoint")
def case_is_a_folder(c: Ctx) -> Case:
    path = c.dir / "folder.pt"
    path.mkdir()
    return load(c, path, ["folder", "directory"], "a folder named .pt")


@case("checkpoint")
def case_missing_file(c: Ctx) -> Case:
    return load(c, c.dir / "absent.pt", ["no checkpoint", "no such", "not found"], "no file there")


@case("checkpoint")
def case_safetensors_file(c: Ctx) -> Case:
    import torch
    from safetensors.torch import save_file

    path = c.dir / "weights.safetensors"
    save_file({"w": torch.ones(2, 2)}, str(path))
    return load(
        c, path, ["readable", "checkpoint", "safetensors"], "a safetensors file, not a ctlib checkpoint"
    )


@case("checkpoint")
def case_vae_without_model_config(c: Ctx) -> Case:
    path = c.dir / "vae.pt"
    save_valid(path, config={"train": {"lr": 1e-4}})
    return load(
        c, path, ["config.model"], "the VAE loader on a checkpoint without config.model", script=LOAD_VAE
    )


@case("checkpoint")
def case_vae_bad_config(c: Ctx) -> Case:
    path = c.dir / "vae_bad.pt"
    save_valid(path, config={"model": {"no_such_option": 1}})
    return load(
        c, path, ["unusable", "no_such_option"], "the VAE loader on an unknown config key", script=LOAD_VAE
    )


@case("checkpoint")
def case_interpolate_with_corrupt_checkpoint(c: Ctx) -> Case:
    import nibabel as nib
    import numpy as np

    thick = c.dir / "thick.nii.gz"
    data = np.random.default_rng(0).integers(-1000, 1000, size=(16, 16, 4)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 5.0, 1.0])), thick)
    bad = c.dir / "diffusion.pt"
    bad.write_bytes(bytes(range(256)) * 8)
    argv = [CTLIB, "interpolate", c.rel(thick), c.rel(c.dir / "thin.nii.gz"), "--run", c.rel(bad), "--quiet"]
    return refused(
        argv,
        [bad.name],
        ["readable", "corrupt", "checkpoint"],
        "ctlib interpolate with a corrupt diffusion checkpoint",
        **TORCH,
    )
