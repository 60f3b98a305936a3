"""Sweeps (``ctlib sweep``): grid expansion, the sweep record and table, the local executor (2 x 2 grid, one
member failing, then resumed), the submitit path through submitit's local executor, requeue on preemption.

Every member is a papermill kernel (a few seconds), so only three tests execute notebooks.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_runs import write_notebook

from ctlib import cli, paths
from ctlib.runs import archive, sweep_executors
from ctlib.runs import index as experiments_index
from ctlib.runs import params as run_params
from ctlib.runs import record as run_record
from ctlib.runs import sweep as sweeps

SWEEP_STEM = "2026-01-01_01_grid_toy"
PARAMETERS = """\
alpha = 1  # int
beta = "x"  # str
seed = 0  # int
fail_flag = ""  # str: a file; while it exists, the member alpha=2, beta="y" fails
resume_run_id = ""  # str: the run whose checkpoint this one continues
"""
BODY = """\
import os, time
from ctlib import runs
t0 = time.time()
if fail_flag and alpha == 2 and beta == "y" and os.path.exists(fail_flag):
    raise RuntimeError("member made to fail")
time.sleep(1.0)
runs.save_metrics({"score": alpha * len(beta) + seed, "t0": t0, "t1": time.time(), "resumed": resume_run_id})
"""


@pytest.fixture
def toy_notebook(tmp_path: Path) -> Path:
    return write_notebook(tmp_path / "study" / f"{SWEEP_STEM}.ipynb", PARAMETERS, BODY)


def _run_cli(argv: list[str], capsys) -> tuple[int, dict, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("{")]
    return code, json.loads(lines[-1]) if lines else {}, captured.err


# ------------------------------------------------------------------------------------- no execution
def test_grid_expansion_and_the_grid_option():
    members = sweeps.expand_grid({"loss": ["mae", "dvh"], "lr": [1e-3, 3e-4]}, seeds=2)
    assert len(members) == 8 and members[0] == {"loss": "mae", "lr": 1e-3, "seed": 0}
    assert members[-1] == {"loss": "dvh", "lr": 3e-4, "seed": 1}
    assert [m["seed"] for m in members[:2]] == [0, 1]  # the last name varies fastest
    assert sweeps.parse_grid_option("loss=mae,dvh") == ("loss", ["mae", "dvh"])
    assert sweeps.parse_grid_option("lr=1e-4,3e-4") == ("lr", [1e-4, 3e-4])
    assert sweeps.parse_grid_option("steps_list=[5],[10, 20]") == ("steps_list", [[5], [10, 20]])
    with pytest.raises(ValueError, match="expected name=value1"):
        sweeps.parse_grid_option("loss")
    with pytest.raises(ValueError, match="--seeds"):
        sweeps.expand_grid({"seed": [1]}, seeds=2)
    with pytest.raises(ValueError, match="at least one value"):
        sweeps.expand_grid({"loss": []})


def test_a_sweep_is_checked_whole_before_anything_runs(toy_notebook, capsys):
    code, _, err = _run_cli(["sweep", str(toy_notebook), "--grid", "alpha=1,two"], capsys)
    assert code == 2 and "'alpha' in overrides: expected int" in err and err.count("\n") == 1
    code, _, err = _run_cli(["sweep", str(toy_notebook), "--grid", "gamma=1,2"], capsys)
    assert code == 2 and "unknown parameter(s) ['gamma']" in err
    assert not sweeps.sweeps_dir().exists() or not any(sweeps.sweeps_dir().iterdir())
    code, _, err = _run_cli(["sweep", "--resume", "20260101-000000_sweep_nothing_0000"], capsys)
    assert code == 2 and "not found" in err


def test_parameter_sets_name_the_grid_of_the_ablations():
    """The loss ablation and the sampling ablation are parameter sets that name their grid."""
    dose = "notebooks/dose/2026-11-23_02_dose_train.ipynb"
    section = run_params.load_sweep_section(dose, "cpu-real-loss-sweep")
    assert section["grid"]["loss"] == ["mae", "mae_gradient", "dvh", "structure_weighted", "ptv_underdose"]
    members = sweeps.expand_grid(section["grid"], section.get("seeds", 0))
    for params in members:  # every member is a valid run of the notebook
        run_params.resolve_parameters(dose, "cpu-real-loss-sweep", params)
    assert "sweep" not in run_params.resolve_parameters(dose, "cpu-real-loss-sweep").values
    sampling = "notebooks/slice_interp/2026-11-23_06_sampling_ablation.ipynb"
    grid = run_params.load_sweep_section(sampling, "cpu-real-sweep")["grid"]
    assert len(sweeps.expand_grid(grid)) == 12 and all(len(v) == 1 for v in grid["steps_list"])


# --------------------------------------------------------------------------------------- execution
@pytest.mark.slow
def test_local_sweep_two_by_two_with_a_failing_member_resumed(toy_notebook, tmp_path, capsys, monkeypatch):
    flag = tmp_path / "fail.flag"
    flag.write_text("fail")
    code, summary, _ = _run_cli(
        [
            "sweep",
            str(toy_notebook),
            "--grid",
            "alpha=1,2",
            "--grid",
            "beta=x,y",
            "-P",
            f"fail_flag={flag}",
            "--max-parallel",
            "2",
            "--gpus",
            "none",
        ],
        capsys,
    )
    assert code == 1 and summary["members"] == 4 and summary["status"] == {"completed": 3, "failed": 1}
    sweep = sweeps.load_sweep(summary["sweep_id"])
    assert [m["params"] for m in sweep.members] == [
        {"alpha": 1, "beta": "x"},
        {"alpha": 1, "beta": "y"},
        {"alpha": 2, "beta": "x"},
        {"alpha": 2, "beta": "y"},
    ]
    runs_root = paths.runs_dir()
    for member in sweep.members:  # every member is a normal recorded run with its own params.json
        record = run_record.read_record(runs_root / sweep.run_id(member))
        assert record.parameter_set is None
        params = json.loads((runs_root / sweep.run_id(member) / "params.json").read_text())["parameters"]
        assert {k: params[k] for k in member["params"]} == member["params"]
    failed = sweep.members[3]
    assert sweep.status(failed) == "failed"
    assert "member made to fail" in run_record.read_record(runs_root / sweep.run_id(failed)).error
    intervals = sorted(
        (m["t0"], m["t1"])
        for m in (
            json.loads((runs_root / sweep.run_id(x) / "metrics.json").read_text()) for x in sweep.members[:3]
        )
    )
    overlapping = max(sum(a0 < t1 and t0 < a1 for a0, a1 in intervals) for t0, t1 in intervals)
    assert overlapping <= 2  # at most --max-parallel members at once

    flag.unlink()
    first_attempt = sweep.run_id(failed)
    code, summary, _ = _run_cli(["sweep", "--resume", sweep.sweep_id, "--gpus", "none"], capsys)
    assert code == 0 and summary["status"] == {"completed": 4}
    sweep = sweeps.load_sweep(sweep.sweep_id)
    assert sweep.members[3]["run_ids"][0] == first_attempt and len(sweep.members[3]["run_ids"]) == 2
    assert all(len(m["run_ids"]) == 1 for m in sweep.members[:3])  # only the failed member ran again
    assert run_record.read_record(runs_root / first_attempt).status == "failed"  # never overwritten
    with open(sweep.folder / sweeps.TABLE_FILE, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["status"] for row in table] == ["completed"] * 4
    assert [int(row["score"]) for row in table] == [1, 1, 2, 2]
    assert table[3]["attempts"] == "2" and table[3]["run_id"] == sweep.run_id(sweep.members[3])
    assert list(sweeps.read_table(sweep.sweep_id)["alpha"]) == [1, 1, 2, 2]
    assert sweeps.completed_run_ids(sweep.sweep_id) == [sweep.run_id(m) for m in sweep.members]
    local_index = experiments_index.write_local_index().read_text()
    assert f"`{sweep.sweep_id}`" in local_index and "4 (4 completed)" in local_index
    assert "alpha: 1, 2; beta: x, y" in local_index
    listed = {row["run_id"] for row in experiments_index.parse_table(local_index)}
    assert {rid for m in sweep.members for rid in m["run_ids"]} <= listed
    assert sweep.sweep_id not in listed  # the sweeps table below is not read back as runs

    monkeypatch.setenv(archive.ARCHIVE_ENV_VAR, str(tmp_path / "experiments"))
    monkeypatch.setattr(paths, "repo_root", lambda: tmp_path)  # the index `ctlib archive` rewrites
    code = cli.main(["archive", sweep.sweep_id])  # its members, record and table kept in git
    assert code == 0, capsys.readouterr().err
    kept = archive.archive_dir() / sweeps.SWEEPS_FOLDER / sweep.sweep_id
    assert json.loads((kept / sweeps.SWEEP_FILE).read_text())["sweep_id"] == sweep.sweep_id
    assert (kept / sweeps.TABLE_FILE).read_text() == (sweep.folder / sweeps.TABLE_FILE).read_text()
    assert all((archive.archive_dir() / sweep.run_id(m) / "run.json").is_file() for m in sweep.members)
    assert not (archive.archive_dir() / first_attempt).exists()  # the failed attempt is not kept
    assert cli.main(["archive", sweep.sweep_id]) == 2 and "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_the_slurm_executor_through_submitit_local_executor(toy_notebook, capsys):
    code, summary, _ = _run_cli(
        [
            "sweep",
            str(toy_notebook),
            "--grid",
            "alpha=1,3",
            "--seeds",
            "1",
            "--executor",
            "slurm",
            "--cluster",
            "local",
            "--time-min",
            "5",
            "--max-parallel",
            "2",
        ],
        capsys,
    )
    assert code == 0 and summary["status"] == {"completed": 2}, summary
    sweep = sweeps.load_sweep(summary["sweep_id"])
    execution = sweep.data["executions"][-1]
    assert execution["executor"] == "slurm" and execution["cluster"] == "local"
    assert len(execution["job_ids"]) == 2 and execution["options"]["time_min"] == 5
    for member, job_id in zip(sweep.members, execution["job_ids"], strict=True):
        note = json.loads((paths.runs_dir() / sweep.run_id(member) / "slurm.json").read_text())
        assert note["job_id"] == job_id and Path(note["stdout"]).is_file()
        assert Path(note["stdout"]).is_relative_to(sweep.folder / "slurm")
    assert [int(r) for r in sweeps.read_table(sweep.sweep_id)["score"]] == [1, 3]


def test_a_preempted_member_is_requeued_as_a_new_attempt_that_resumes(toy_notebook):
    from ctlib.runs import sweep_slurm

    sweep = sweeps.create_sweep(toy_notebook, None, {"alpha": [1, 2]})
    assert sweep.data["declares_resume_run_id"]
    interrupted = sweep.run_id(sweep.members[1])
    (paths.runs_dir() / interrupted / "checkpoints").mkdir(parents=True)
    (paths.runs_dir() / interrupted / "checkpoints" / "last.pt").write_bytes(b"")
    delayed = sweep_slurm.MemberJob().checkpoint(str(paths.runs_dir()), sweep.sweep_id, 1)
    assert delayed.args == (str(paths.runs_dir()), sweep.sweep_id, 1)
    again = sweeps.load_sweep(sweep.sweep_id)
    assert again.members[1]["run_ids"][0] == interrupted and len(again.members[1]["run_ids"]) == 2
    assert sweep_executors.member_overrides(again, again.members[1]) == {
        "alpha": 2,
        "resume_run_id": interrupted,
    }
    assert sweep_executors.member_overrides(again, again.members[0]) == {"alpha": 1}
    command = sweep_executors.member_command(again, again.members[1])
    assert (
        command[-2:] == ["--run-id", again.run_id(again.members[1])]
        and "resume_run_id=" + json.dumps(interrupted) in command
    )
