"""The dose GPU campaign's data path (bench/dose_subset.py pack -> unpack) and its step wiring
(bench/dose_gpu_campaign.py with the notebook runs, the evaluation and the export stubbed)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import dose_gpu_campaign  # noqa: E402
import dose_subset  # noqa: E402

GRID = (12, 10, 8)


def synthetic_fields(rng: np.random.Generator, grid: tuple[int, int, int] = GRID) -> dict[str, np.ndarray]:
    """A tiny OpenKBP-like patient: body in the middle, 3 structures (one missing), dose in whole mGy."""
    body = np.zeros(grid, dtype=bool)
    body[2:-3, 1:-2, 2:-1] = True
    ct = np.where(body, rng.integers(900, 1200, grid), 0).astype(np.int16)
    ct[3, 3, 3] = 32743  # a metal voxel beyond 4095 stays as it is
    pdm = body.copy()
    pdm[2] = False  # CT reaches beyond the possible-dose mask
    masks = np.zeros((3, *grid), dtype=bool)
    masks[0, 4:6, 3:5, 3:5] = True
    masks[2, 5:8, 4:7, 4:6] = True  # overlaps structure 0
    dose = np.where(pdm, rng.integers(0, 75_000, grid) / 1000.0, 0.0).astype(np.float32)
    return {
        "ct": ct,
        "dose_gy": dose,
        "possible_dose_mask": pdm,
        "structure_masks": masks,
        "roi_names": np.array(["Brainstem", "Larynx", "PTV70"]),
        "roi_present": np.array([True, False, True]),
        "voxel_size_mm": np.array([3.9, 3.9, 2.5], dtype=np.float32),
        "patient_id": np.array("pt_7"),
        "split": np.array("train"),
    }


def assert_same(
    unpacked: dict[str, np.ndarray], fields: dict[str, np.ndarray], dose_tolerance_gy: float
) -> None:
    assert sorted(unpacked) == sorted(fields)
    for key, value in fields.items():
        assert unpacked[key].dtype == value.dtype and unpacked[key].shape == value.shape, key
        if key == "dose_gy":
            assert float(np.abs(unpacked[key] - value).max()) <= dose_tolerance_gy
        else:
            np.testing.assert_array_equal(unpacked[key], value, err_msg=key)


@pytest.mark.parametrize("step_mgy", [1, 10])
def test_pack_round_trip_synthetic(step_mgy: int) -> None:
    fields = synthetic_fields(np.random.default_rng(step_mgy))
    packed = dose_subset.pack_fields(fields, step_mgy)
    assert packed["ct"].shape == (7, 7, 5)  # the union box (CT reaches slice 2, the pdm does not)
    assert packed["labels"].dtype == np.uint16 and int(packed["labels"].max()) == 0b1011
    unpacked = dose_subset.unpack_fields(packed, GRID)
    assert_same(unpacked, fields, step_mgy / 2000 + 1e-5)  # + float32 rounding near 75 Gy
    if step_mgy == 1:  # whole milli-Gy come back bit for bit
        np.testing.assert_array_equal(unpacked["dose_gy"], fields["dose_gy"])


def test_pack_refuses_inexact_step_one() -> None:
    fields = synthetic_fields(np.random.default_rng(0))
    fields["dose_gy"] = fields["dose_gy"] + np.float32(0.0004) * fields["possible_dose_mask"]
    with pytest.raises(ValueError, match="not whole milli-Gy"):
        dose_subset.pack_fields(fields, 1)


def test_pack_round_trip_real_patient(tmp_path: Path) -> None:
    """One shared OpenKBP patient: packed smaller, read back by ctlib.io.openkbp exactly (dose to 5 mGy)."""
    from ctlib import paths
    from ctlib.io import openkbp

    root = paths.data_dir(required=False)
    if root is None or not (root / "openkbp" / "train" / "pt_1.npz").is_file():
        pytest.skip("the shared OpenKBP data ($CTLIB_DATA_DIR/openkbp) is not here")
    source = root / "openkbp" / "train" / "pt_1.npz"
    size, change = dose_subset.pack_file(source, tmp_path / "pack")
    assert size < 0.7 * source.stat().st_size
    assert change["dose_score_gy"] < 0.01 and change["max_voxel_gy"] <= 0.005 + 1e-5
    assert dose_subset.unpack(tmp_path / "pack", tmp_path / "data", workers=2) == {
        "train": 1,
        "validation": 0,
        "test": 0,
    }
    rebuilt = tmp_path / "data" / "openkbp" / "train" / "pt_1.npz"
    with np.load(source) as shared, np.load(rebuilt) as back:
        assert_same({k: back[k] for k in back.files}, {k: shared[k] for k in shared.files}, 0.005 + 1e-5)
    before, after = openkbp.read_openkbp_npz(source), openkbp.read_openkbp_npz(rebuilt)
    np.testing.assert_array_equal(after.ct.array, before.ct.array)
    assert after.ct.spacing == before.ct.spacing and sorted(after.structures) == sorted(before.structures)
    assert float(np.abs(after.dose_gy - before.dose_gy).max()) <= 0.005 + 1e-5


def padded_fields(split: str, seed: int = 1) -> dict[str, np.ndarray]:
    """``synthetic_fields`` placed in the 128^3 OpenKBP grid."""
    fields = {**synthetic_fields(np.random.default_rng(seed)), "split": np.array(split)}
    for key in ("ct", "dose_gy", "possible_dose_mask", "structure_masks"):
        pad = [(0, 0)] * (fields[key].ndim - 3) + [(0, 128 - n) for n in GRID]
        fields[key] = np.pad(fields[key], pad)
    return fields


def test_build_check_and_fit(tmp_path: Path) -> None:
    """device_pack --subset dose's data: the lowest ids of each split, SUBSET.md naming the subset, check
    passing against the source; with a room too small for one patient, none (and a line saying so)."""
    import device_pack

    source = tmp_path / "shared"
    (source / "openkbp").mkdir(parents=True)
    (source / "openkbp" / "SOURCE.md").write_text("OpenKBP\n")
    for split, ids in {"train": (3, 10, 2), "validation": (201,), "test": (250, 242)}.items():
        (source / "openkbp" / split).mkdir()
        for n in ids:
            np.savez_compressed(source / "openkbp" / split / f"pt_{n}.npz", **padded_fields(split, n))
    lines = dose_subset.build(source, tmp_path / "pack", {"train": 2, "validation": 1, "test": 1})
    assert device_pack.subset_in(tmp_path / "pack") == "dose"
    assert [p.name for p in dose_subset.packed_files(tmp_path / "pack")["train"]] == ["pt_2.npz", "pt_3.npz"]
    assert [p.name for p in dose_subset.packed_files(tmp_path / "pack")["test"]] == ["pt_242.npz"]
    assert dose_subset.check(tmp_path / "pack", source, max_per_split=2) == []
    assert "voxel at most 0.0050 Gy" in lines[-2]
    lines = dose_subset.build(source, tmp_path / "pack", room_bytes=0)  # the tree took it all
    assert dose_subset.counts(tmp_path / "pack") == {"train": 0, "validation": 0, "test": 0}
    assert "does not fit" in lines[0]


def test_training_minutes_from_budget() -> None:
    args = dose_gpu_campaign.argparse.Namespace(minutes=None, budget_s=560.0, reserve_s=200.0)
    assert dose_gpu_campaign.training_minutes(args, 60.0) == 5.0
    assert dose_gpu_campaign.training_minutes(args, 550.0) == 0.5  # never below half a minute
    args.minutes = 0.3
    assert dose_gpu_campaign.training_minutes(args, 60.0) == 0.3


def test_campaign_wires_the_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """unpack -> preprocess (on the unpacked root) -> train (with the budget) -> evaluate -> export, the
    state written to campaign.json; the notebook runs, the evaluation and the export stubbed."""
    pack = tmp_path / "pack"
    for split in dose_subset.SPLITS:
        fields = padded_fields(split)
        (pack / dose_subset.PACK / split).mkdir(parents=True)
        dose_subset.write_npz_lzma(
            pack / dose_subset.PACK / split / "pt_7.npz", dose_subset.pack_fields(fields)
        )
    calls = []

    def fake_run(
        notebook: str, parameter_set: str, overrides: dict, checkpoint_file: str | None = None
    ) -> dict:
        calls.append((Path(notebook).stem, parameter_set, dict(overrides)))
        if "preprocess" in notebook:
            files = sorted(Path(overrides["data_root"]).glob("openkbp/*/*.npz"))
            assert len(files) == 3  # the notebook would read the standard files
        return {
            "run_id": f"run{len(calls)}",
            "status": "completed",
            "seconds": 1.0,
            "error": None,
            "metrics": {"n_ok": 3},
            **({"trained_steps": 7} if checkpoint_file else {}),
        }

    def fake_bench(script: str, out: Path, *arguments: str) -> None:
        assert script == "dose_openkbp.py" and "--tta" in arguments
        out.write_text(
            json.dumps(
                {
                    "variants": [
                        {
                            "evaluation": e,
                            "patients": 1,
                            "dose_score_gy": 3.0,
                            "dvh_score_gy": 2.0,
                            "gamma_pass_percent": 90.0,
                        }
                        for e in ("plain", "mirror TTA")
                    ]
                }
            )
        )

    monkeypatch.setattr(dose_gpu_campaign, "record_run", fake_run)
    monkeypatch.setattr(dose_gpu_campaign, "bench_script", fake_bench)
    monkeypatch.setattr(
        dose_gpu_campaign,
        "export_release",
        lambda state, args: {"status": "completed", "card": dose_gpu_campaign.card(state, args)},
    )
    monkeypatch.setattr(
        dose_gpu_campaign, "collect", lambda state, out: sorted(p.name for p in out.iterdir())
    )
    state = dose_gpu_campaign.main(["--out", str(tmp_path / "out"), "--pack", str(pack), "--minutes", "0.3"])
    shutil.rmtree(state["unpack"]["data_root"])  # collect (stubbed) removes it
    assert [c[0] for c in calls] == ["2026-11-23_01_dose_preprocess", "2026-11-23_02_dose_train"]
    assert calls[0][2]["source"] == "openkbp" and calls[1][2] == {
        "preprocess_run_id": "run1",
        "max_minutes": 0.3,
    }
    assert state["unpack"]["patients"] == {"train": 1, "validation": 1, "test": 1}
    assert state["train"]["budget"]["max_minutes"] == 0.3 and state["train"]["trained_steps"] == 7
    assert state["evaluate"]["scores"]["mirror TTA"]["dose_score_gy"] == 3.0
    assert state["export"]["card"]["metrics"]["mirror TTA dose score (Gy)"] == 3.0
    saved = json.loads((tmp_path / "out" / "campaign.json").read_text())
    assert set(saved["seconds"]) == set(dose_gpu_campaign.STEPS)
