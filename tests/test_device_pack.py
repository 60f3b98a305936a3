"""bench/device_pack.py: the wheel closure from METADATA, the size budget, the data roles, the crop."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ctlib.data import body_mask, phantom

BENCH = Path(__file__).resolve().parent.parent / "bench" / "device_pack.py"

METADATA = """Metadata-Version: 2.1
Name: Demo_Pkg
Version: 1.0
Requires-Dist: Jupyter_Client>=8.0
Requires-Dist: traitlets>=5.3
Requires-Dist: appnope>=0.1.2; platform_system == 'Darwin'
Requires-Dist: importlib-resources>=5.12; python_version < '3.12'
Requires-Dist: typing-extensions>=4.6; python_version < '3.13'
Requires-Dist: pytest>=7; extra == 'test'
Requires-Dist: aiohttp>=3.9; python_version == "3.12"

Requires-Dist: not-a-header-in-the-body
"""


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_device_pack", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_follow_the_device_markers_and_skip_extras():
    bench = load_bench()
    found = bench.requirements_of(METADATA.split("\n\n")[0])
    assert found == {"jupyter-client": ">=8.0", "traitlets": ">=5.3", "typing-extensions": ">=4.6",
                     "aiohttp": ">=3.9"}
    older = bench.requirements_of(METADATA.split("\n\n")[0], {**bench.DEVICE_ENV, "python_version": "3.11"})
    assert "importlib-resources" in older and "aiohttp" not in older


def test_closure_stops_at_what_the_device_has_and_at_pruned_names():
    bench = load_bench()
    graph = {"papermill": ["NBClient", "tqdm"], "nbclient": ["jupyter_client", "nbformat"],
             "jupyter-client": ["pyzmq", "traitlets"], "nbformat": ["traitlets", "papermill"],
             "ipykernel": ["debugpy", "jupyter-client"], "debugpy": ["never-reached"]}
    asked = []

    def requires(name: str) -> list[str]:
        asked.append(name)
        return graph.get(name, [])

    order = bench.closure(["Papermill", "ipykernel"], requires, skip=["tqdm", "debugpy"])
    assert order == ["papermill", "ipykernel", "nbclient", "jupyter-client", "nbformat", "pyzmq", "traitlets"]
    assert asked == order, "each name is read once, the skipped ones never"


def test_budget_sums_the_parts_against_the_limit():
    bench = load_bench()
    lines, fits = bench.budget({"tree": 15 * 2**20, ".whl": 10 * 2**20, ".campaign_data": 34 * 2**20}, 60)
    assert fits and lines[-1].split()[2] == "59.00"
    assert not bench.budget({"tree": 15 * 2**20, ".campaign_data": 45 * 2**20 + 1}, 60)[1]


def test_roles_of_the_subset_must_match_the_shared_data():
    bench = load_bench()
    subset = {"thin_ct__x_head_1.25mm": "train", "thin_ct__y_chest_1mm": "test", "t__aorta_1.5mm": "test",
              "openkbp__test__pt_242": "test", "openkbp__train__pt_1": "train"}
    assert bench.check_roles(subset, {**subset, "openkbp__train__pt_2": "train"}) == []
    moved = {**subset, "thin_ct__x_head_1.25mm": "test"}
    assert bench.check_roles(moved, subset) == [
        "thin_ct__x_head_1.25mm: test, expected train",
        "thin_ct__x_head_1.25mm: test here, train in the shared data",
    ]
    assert bench.check_roles({k: v for k, v in subset.items() if "aorta" not in k}, None) == [
        "no volume matches *aorta*"]


def test_compact_ct_keeps_the_body_and_its_positions():
    bench = load_bench()
    volume = phantom.ct_phantom(shape=(12, 96, 96), seed=0)
    volume = volume.with_array(np.rint(volume.array), origin=(10.0, -20.0, 30.0))
    small = bench.compact_ct(volume, margin_px=3, max_slices=8)
    assert small.shape[0] == 8 and small.shape[1] < 96 and small.shape[2] < 96
    # voxel [0, 0, 0] of the crop is voxel [z0, y0, x0] of the original, at the same LPS position
    mask = body_mask.body_mask(volume.array[2:10])
    ys, xs = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    y0, x0 = max(ys[0] - 3, 0), max(xs[0] - 3, 0)
    expected = volume.index_to_lps() @ np.array([x0, y0, 2, 1.0])
    np.testing.assert_allclose(small.origin, expected[:3])
    inside = body_mask.body_mask(small.array)
    original = volume.array[2:10, y0 : y0 + small.shape[1], x0 : x0 + small.shape[2]]
    np.testing.assert_array_equal(small.array[inside], original[inside])
    assert small.array[0, 0, 0] == bench.AIR_HU


def test_slim_wheel_drops_test_data_and_its_record_lines(tmp_path):
    import zipfile

    bench = load_bench()
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    members = {"demo/__init__.py": b"x = 1\n", "demo/tests/data/big.bin": b"0" * 5000,
               "demo/sub/tests/test_a.py": b"assert True\n", "demo/testing.py": b"y = 2\n"}
    record = "".join(f"{n},sha256=abc,{len(d)}\n" for n, d in members.items())
    record += "demo-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("demo-1.0.dist-info/RECORD", record)
    assert bench.slim_wheel(wheel, ("demo/tests/", "demo/*/tests/")) > 0
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        kept_record = archive.read("demo-1.0.dist-info/RECORD").decode()
    assert names == {"demo/__init__.py", "demo/testing.py", "demo-1.0.dist-info/RECORD"}
    assert "tests" not in kept_record and "demo/testing.py," in kept_record
    assert bench.slim_wheel(wheel, ("demo/tests/",)) == 0, "a slim wheel is left as it is"
