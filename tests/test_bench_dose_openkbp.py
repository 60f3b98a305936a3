"""bench/dose_openkbp.py --merge: earlier variants are kept unless their training run is evaluated again."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "dose_openkbp.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_dose_openkbp", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_merge_keeps_other_runs_and_replaces_re_evaluated_ones():
    bench = load_bench()
    old = {
        "date": "2026-11-23T08:00:00+00:00", "evaluation_device": "cpu",
        "variants": [{"variant": "mae", "train_run_id": "a", "dose_score_gy": 9.0},
                     {"variant": "dvh", "train_run_id": "b", "dose_score_gy": 9.5}],
        "per_patient": [{"train_run_id": "a", "patient": "pt_1"}, {"train_run_id": "b", "patient": "pt_1"},
                        {"train_run_id": "b", "patient": "pt_2"}],
    }
    new_variants = [
        {"variant": "dvh", "train_run_id": "b", "dose_score_gy": 8.0, "evaluated_utc": "later"},
        {"variant": "diffusion", "train_run_id": "c", "dose_score_gy": 12.0, "evaluated_utc": "later"},
    ]
    new_rows = [{"train_run_id": "b", "patient": "pt_1"}, {"train_run_id": "c", "patient": "pt_1"}]
    variants, rows = bench.merged(old, new_variants, new_rows)
    assert [(v["train_run_id"], v["dose_score_gy"]) for v in variants] == [
        ("a", 9.0),
        ("b", 8.0),
        ("c", 12.0),
    ]
    assert variants[0]["evaluated_utc"] == old["date"] and variants[0]["evaluation_device"] == "cpu"
    assert [(r["train_run_id"], r["patient"]) for r in rows] == [("a", "pt_1"), ("b", "pt_1"), ("c", "pt_1")]


def test_merge_tells_evaluations_of_one_run_apart():
    bench = load_bench()
    old = {
        "date": "d", "evaluation_device": "cpu",
        "variants": [{"train_run_id": "a", "evaluation": "plain", "dose_score_gy": 5.0},
                     {"train_run_id": "a", "evaluation": "mirror TTA", "dose_score_gy": 4.8},
                     {"train_run_id": "z", "dose_score_gy": 9.0}],  # from before "evaluation" existed
        "per_patient": [{"train_run_id": "a", "evaluation": "plain", "patient": "pt_1"},
                        {"train_run_id": "a", "evaluation": "mirror TTA", "patient": "pt_1"},
                        {"train_run_id": "z", "patient": "pt_1"}],
    }
    new = [{"train_run_id": "a", "evaluation": "plain", "dose_score_gy": 4.9}]
    new_rows = [{"train_run_id": "a", "evaluation": "plain", "patient": "pt_1"}]
    variants, rows = bench.merged(old, new, new_rows)
    assert [(v["train_run_id"], v.get("evaluation", "plain"), v["dose_score_gy"]) for v in variants] == [
        ("a", "mirror TTA", 4.8), ("z", "plain", 9.0), ("a", "plain", 4.9)]
    assert [(r["train_run_id"], r.get("evaluation", "plain")) for r in rows] == [
        ("a", "mirror TTA"), ("z", "plain"), ("a", "plain")]
