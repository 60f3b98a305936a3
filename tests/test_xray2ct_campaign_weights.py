"""bench/xray2ct_campaign_weights.py: parts come back in order within a call's limits; a file loads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ctlib import release
from ctlib.data import windows
from ctlib.studies.xray2ct import networks, normalization

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture()
def weights(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # it imports gpu_campaign, beside it
    import xray2ct_campaign_weights

    return xray2ct_campaign_weights


def _staged(staging: Path, sizes: dict[str, list[int]]) -> dict[str, dict]:
    staging.mkdir()
    staged = {}
    for name, parts in sizes.items():
        names = [f"{name}.safetensors.part{i}" for i in range(len(parts))]
        for part, size in zip(names, parts, strict=True):
            (staging / part).write_bytes(b"x" * size)
        staged[name] = {"parts": names, "delivered": []}
    return staged


def test_deliver_fills_a_call_in_order_and_the_next_call_takes_the_rest(weights, tmp_path):
    staged = _staged(tmp_path / "staging", {"a": [40, 10], "b": [40, 40, 5]})
    first, second = tmp_path / "call1", tmp_path / "call2"
    first.mkdir()
    second.mkdir()
    (first / "runs.tar.gz").write_bytes(b"y" * 30)
    got = weights.deliver(staged, tmp_path / "staging", first, max_files=5, max_bytes=130)
    assert got == ["a.safetensors.part0", "a.safetensors.part1", "b.safetensors.part0"]  # 30 + 90 bytes
    got = weights.deliver(staged, tmp_path / "staging", second, max_files=1, max_bytes=1000)
    assert got == ["b.safetensors.part1"]  # stopped by the file count
    got = weights.deliver(staged, tmp_path / "staging", second, max_files=8, max_bytes=1000)
    assert got == ["b.safetensors.part2"]  # what earlier calls carried is not carried again
    assert staged["b"]["delivered"] == ["b.safetensors.part0", "b.safetensors.part1", "b.safetensors.part2"]
    assert weights.deliver(staged, tmp_path / "staging", second, max_files=8, max_bytes=10**6) == []


def test_deliver_stops_at_the_first_part_that_does_not_fit(weights, tmp_path):
    staged = _staged(tmp_path / "staging", {"a": [50, 5]})
    (tmp_path / "out").mkdir()
    assert weights.deliver(staged, tmp_path / "staging", tmp_path / "out", max_files=8, max_bytes=40) == []
    assert staged["a"]["delivered"] == []


def test_a_written_file_loads_back_into_the_same_model(weights, tmp_path):
    from safetensors.torch import save_file

    geometry = {"volume_size": 16, "voxel_mm": 16.0, "detector_pixels": [16, 16], "n_samples": 8}
    config = networks.X2CTConfig(kind="deterministic", geometry=geometry,
                                 lift={"channels": 8, "features": [8, 8, 8, 8, 8, 8]},
                                 unet_features=(8, 8, 8, 8, 8, 8))
    torch.manual_seed(0)
    model = networks.build(config).eval()
    window = normalization.RECON
    metadata = {"format": weights.FORMAT, "kind": "deterministic", "config": json.dumps(config.to_dict()),
                "normalization": json.dumps(windows.normalization_record(window)), "spec": "null",
                "precision": json.dumps({"dtype": "float16"})}
    save_file(release.to_dtype(model.state_dict(), "float16"), str(tmp_path / "m.safetensors"), metadata)
    loaded, meta = weights.load(tmp_path / "m.safetensors")
    assert meta["config"]["kind"] == "deterministic" and meta["spec"] is None
    drrs = torch.rand(1, 2, 16, 16)
    with torch.no_grad():
        expected = networks.build(config).eval()
        expected.load_state_dict(release.fp16_rounded(model.state_dict()))
        torch.testing.assert_close(loaded(drrs), expected(drrs))
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "m.safetensors").read_bytes())
    save_file({"w": torch.zeros(1)}, str(tmp_path / "bad.safetensors"), {"format": "other"})
    with pytest.raises(ValueError, match="expected 'ctlib.xray2ct.weights/1'"):
        weights.load(tmp_path / "bad.safetensors")
