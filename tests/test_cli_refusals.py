"""CLI refusals (issue 11): one line on stderr, exit status 2, no traceback, and no heavy import.

Each bad argument is refused before torch, papermill or nbformat are imported, so a refusal takes a
fraction of a second instead of the 8-53 s it took when torch came first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ctlib.diffusion import samplers
from ctlib.studies.interp import cli as interp_cli

NOTEBOOK = "notebooks/slice_interp/2026-11-23_02_vae.ipynb"
HEAVY = ("torch", "papermill", "nbformat", "monai")
CASES = {
    "unknown subcommand": (["bogus"], "invalid choice: 'bogus'"),
    "info without path": (["info"], "required: path"),
    "bad option type": (["interpolate", "a.nii", "b.nii", "--run", "r", "--factor", "six"], "invalid int"),
    "unknown option": (["info", "x.nii", "--nope"], "unrecognized arguments: --nope"),
    "missing notebook": (["run", "nonexistent.ipynb"], "notebook not found"),
    "not a notebook": (["run", "README.md"], "expected a .ipynb notebook"),
    "unknown parameter set": (["run", NOTEBOOK, "-p", "nosuchset"], "parameter set 'nosuchset' not found"),
    "malformed YAML override": (
        ["run", NOTEBOOK, "-P", "lr=[1,"],
        "override lr=[1,: the value is not valid YAML",
    ),
    "malformed YAML mapping": (["run", NOTEBOOK, "-P", "window={a"], "not valid YAML"),
    "override without =": (["run", NOTEBOOK, "-P", "lr"], "expected an override of the form name=value"),
    "unknown parameter": (["run", NOTEBOOK, "-P", "nosuch=1"], "unknown parameter(s) ['nosuch']"),
    "wrong parameter type": (["run", NOTEBOOK, "-P", "steps=many"], "steps"),
    "interpolate without run or release": (
        ["interpolate", "README.md", "b.nii"],
        "no released interpolation model",
    ),
    "interpolate missing input": (
        ["interpolate", "nope.nii", "b.nii", "--run", "r"],
        "nope.nii: no such file",
    ),
    "interpolate unknown run": (["interpolate", "README.md", "b.nii", "--run", "norun"], "--run 'norun'"),
    "interpolate bad factor": (["interpolate", "a.nii", "b.nii", "--run", "r", "--factor", "1"], "--factor"),
    "interpolate bad sampler": (["interpolate", "a.nii", "b.nii", "--run", "r", "--sampler", "x"], "sampler"),
    "interpolate zero steps": (["interpolate", "a.nii", "b.nii", "--run", "r", "--steps", "0"], "--steps"),
}
PROBE = (
    "import json, sys\n"
    "from ctlib import cli\n"
    "try:\n"
    "    rc = cli.main(json.loads(sys.argv[1]))\n"
    "except SystemExit as exit:\n"
    "    rc = exit.code\n"
    f"print(json.dumps({{'rc': rc, 'heavy': sorted(m for m in {HEAVY!r} if m in sys.modules)}}))\n"
)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_argument_is_refused_in_one_line_without_heavy_imports(name, tmp_path):
    argv, expected = CASES[name]
    env_runs = {"CTLIB_RUNS_DIR": str(tmp_path / "runs"), "CTLIB_WEIGHTS_DIR": str(tmp_path / "weights")}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        capture_output=True,
        text=True,
        env={**os.environ, **env_runs},
        cwd=str(interp_cli.Path(__file__).resolve().parents[1]),
        timeout=60,
    )
    seconds = time.perf_counter() - started
    result = json.loads(done.stdout.strip().splitlines()[-1])
    err_lines = done.stderr.strip().splitlines()
    assert result["rc"] == 2, done.stderr
    assert len(err_lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert expected in err_lines[0]
    assert result["heavy"] == [], f"{name}: imported {result['heavy']} before refusing ({seconds:.2f} s)"


def test_sampler_names_match_the_registry():
    """The CLI checks --sampler against a constant so that it needs no torch; it must stay in step."""
    assert sorted(interp_cli.SAMPLER_NAMES) == sorted(samplers.SAMPLERS)
