"""The shared OpenKBP patients packed for the dose GPU campaign (bench/dose_gpu_campaign.py), and unpacked.

The device machine gets no ../shared/data (/work/.library/device: 64 MiB travel with the tree), so
``bench/device_pack.py --subset dose`` writes ``.campaign_data/openkbp_pack/<split>/pt_<id>.npz``, one file
per patient, a ``.npz`` with LZMA members (``np.load`` reads it), holding:

- ``box`` (3, 2) int16: start and stop along the OpenKBP axes (i, j, k) of the union bounding box of CT != 0,
  the possible-dose mask, every structure and dose > 0. Outside it the source file holds only 0 / False,
  so the crop loses nothing.
- ``ct`` int16 inside the box: OpenKBP's stored values (about HU + 1024), unchanged.
- ``dose`` uint16 (uint32 where the range needs it) inside the box: ``round(dose_gy * 1000 / step)`` with
  ``dose_step_mgy`` = step. Step 10 (the default, centi-Gy) puts every voxel within 0.005 Gy of the shared
  file, so the dose score (a mean of |pred - true| in the possible-dose mask) of any prediction and every
  DVH metric (percentiles and means of the dose) move by at most 0.005 Gy; ``build`` reports the measured
  change. Step 1 is exact: the shared files hold float32 of the challenge's 3-decimal CSV values, and
  float32(k / 1000) gives them back bit for bit (``pack_fields`` refuses a file where it would not).
- ``labels`` uint16 inside the box: bit 0 the possible-dose mask, bit 1 + r structure r (``roi_names``).
- ``roi_names``, ``roi_present``, ``voxel_size_mm``, ``patient_id``, ``split`` as in the source.

``unpack`` rebuilds the standard files (``ctlib.io.openkbp``: the same keys, shapes and dtypes) under
``<root>/openkbp/<split>/``: CT, masks and the small fields equal to the shared data's, the dose within
half a step.

    python bench/dose_subset.py --out /tmp/dose_pack --patients train=1 validation=1 test=1   # a small pack
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xray2ct_subset import write_npz_lzma  # noqa: E402  (bench/, beside this file)

from ctlib import paths  # noqa: E402

NAME = "dose device subset"  # first line of SUBSET.md (device_pack.subset_in)
PACK = "openkbp_pack"  # folder under the pack root
SPLITS = ("train", "validation", "test")
ALL = {"train": 80, "validation": 20, "test": 40}  # the shared data's patients
SMALL_KEYS = ("roi_names", "roi_present", "voxel_size_mm", "patient_id", "split")
DOSE_STEP_MGY = 10  # centi-Gy
# --fit order: one patient of each split, then train : test = 2 : 1 while they fit
FILL_ORDER = ("train", "validation", "test", *(("train", "train", "test") * 40))


def crop_box(fields: Mapping[str, np.ndarray]) -> tuple[slice, slice, slice]:
    """The union bounding box (OpenKBP axes i, j, k) of CT != 0, the possible-dose mask, the structures
    and dose > 0; a patient with none of them is refused."""
    used = (fields["ct"] != 0) | fields["possible_dose_mask"] | fields["structure_masks"].any(0)
    if "dose_gy" in fields:
        used |= fields["dose_gy"] > 0
    if not used.any():
        raise ValueError(f"{fields.get('patient_id', 'patient')}: nothing but zeros to pack")
    box = []
    for axis in range(3):
        hits = np.flatnonzero(used.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def quantize_dose(dose_gy: np.ndarray, step_mgy: int) -> np.ndarray:
    """``round(dose_gy * 1000 / step_mgy)`` as uint16, or uint32 when the largest value needs it."""
    steps = np.rint(dose_gy.astype(np.float64) * 1000.0 / step_mgy)
    if steps.min(initial=0) < 0:
        raise ValueError(f"negative dose (min {dose_gy.min():.3g} Gy) cannot be packed")
    return steps.astype(np.uint16 if steps.max(initial=0) < 2**16 else np.uint32)


def dequantize_dose(steps: np.ndarray, step_mgy: int) -> np.ndarray:
    """float32 Gy of ``quantize_dose``'s integers (float64 product, then one rounding to float32)."""
    return (steps.astype(np.float64) * step_mgy / 1000.0).astype(np.float32)


def pack_fields(fields: Mapping[str, np.ndarray], step_mgy: int = DOSE_STEP_MGY) -> dict[str, np.ndarray]:
    """One shared OpenKBP patient (``np.load`` fields) as the packed arrays of the module docstring."""
    box = crop_box(fields)
    masks = fields["structure_masks"]
    if len(masks) > 15:
        raise ValueError(f"{len(masks)} structures do not fit a uint16 beside the possible-dose mask")
    labels = fields["possible_dose_mask"][box].astype(np.uint16)
    for r, mask in enumerate(masks):
        labels |= mask[box].astype(np.uint16) << (r + 1)
    packed = {
        "box": np.array([[b.start, b.stop] for b in box], dtype=np.int16),
        "ct": np.ascontiguousarray(fields["ct"][box]).astype(np.int16),
        "labels": labels,
        "dose_step_mgy": np.array(step_mgy, dtype=np.int32),
        **{k: np.asarray(fields[k]) for k in SMALL_KEYS if k in fields},
    }
    if not np.array_equal(packed["ct"], fields["ct"][box]):
        raise ValueError(f"{fields.get('patient_id', 'patient')}: CT values outside int16")
    if "dose_gy" in fields:
        packed["dose"] = quantize_dose(fields["dose_gy"][box], step_mgy)
        if step_mgy == 1 and not np.array_equal(dequantize_dose(packed["dose"], 1), fields["dose_gy"][box]):
            raise ValueError(
                f"{fields.get('patient_id', 'patient')}: dose is not whole milli-Gy; step 1 "
                "would not be exact"
            )
    return packed


def unpack_fields(
    packed: Mapping[str, np.ndarray], grid: Sequence[int] = (128, 128, 128)
) -> dict[str, np.ndarray]:
    """The standard OpenKBP fields (``ctlib.io.openkbp``'s keys and dtypes) of one packed patient."""
    box = tuple(slice(int(a), int(b)) for a, b in packed["box"])
    grid = tuple(int(n) for n in grid)
    ct = np.zeros(grid, dtype=np.int16)
    ct[box] = packed["ct"]
    labels = packed["labels"]
    pdm = np.zeros(grid, dtype=bool)
    pdm[box] = (labels & 1).astype(bool)
    count = len(packed["roi_names"])
    masks = np.zeros((count, *grid), dtype=bool)
    for r in range(count):
        masks[r][box] = ((labels >> (r + 1)) & 1).astype(bool)
    fields = {"ct": ct}
    if "dose" in packed:
        dose = np.zeros(grid, dtype=np.float32)
        dose[box] = dequantize_dose(packed["dose"], int(packed["dose_step_mgy"]))
        fields["dose_gy"] = dose
    fields.update({"possible_dose_mask": pdm, "structure_masks": masks})
    fields.update({k: np.asarray(packed[k]) for k in SMALL_KEYS if k in packed})
    return fields


def quantization_change(fields: Mapping[str, np.ndarray], step_mgy: int) -> dict[str, float]:
    """What the dose quantization moves, in Gy: the dose score of the packed dose against the shared one
    (mean |change| in the possible-dose mask: the most any prediction's dose score can move), the largest
    voxel change there, and the largest change of an OpenKBP DVH metric."""
    from ctlib.metrics import dose_scores

    dose = fields["dose_gy"]
    packed = dequantize_dose(quantize_dose(dose, step_mgy), step_mgy)
    pdm = fields["possible_dose_mask"]
    names = [str(n) for n in fields["roi_names"]]
    masks = {
        n: m
        for n, m, here in zip(names, fields["structure_masks"], fields["roi_present"], strict=True)
        if here and m.any()
    }
    spacing = fields["voxel_size_mm"]
    before = dose_scores.dvh_metrics(dose, masks, spacing)
    after = dose_scores.dvh_metrics(packed, masks, spacing)
    changes = dose_scores.dvh_differences(before, after)
    return {
        "dose_score_gy": dose_scores.dose_score(packed, dose, pdm),
        "max_voxel_gy": float(np.abs(packed - dose)[pdm].max(initial=0.0)),
        "max_dvh_metric_gy": max(changes.values(), default=0.0),
    }


def patient_files(source: Path, split: str, count: int) -> list[Path]:
    """The ``count`` lowest-id patient files of one split of the shared data (``openkbp/<split>/*.npz``)."""
    found = sorted(
        (source / "openkbp" / split).glob("pt_*.npz"), key=lambda p: int(p.stem.removeprefix("pt_"))
    )
    return found[:count]


def pack_file(path: Path, dest_root: Path, step_mgy: int = DOSE_STEP_MGY) -> tuple[int, dict[str, float]]:
    """Pack one shared patient file into ``dest_root/openkbp_pack/<split>/``: the bytes written and
    ``quantization_change``."""
    with np.load(path, allow_pickle=False) as data:
        fields = {k: data[k] for k in data.files}
    split = str(fields.get("split", path.parent.name))
    target = dest_root / PACK / split / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    size = write_npz_lzma(target, pack_fields(fields, step_mgy))
    return size, quantization_change(fields, step_mgy) if "dose_gy" in fields else {}


def unpack_file(path: Path, data_root: Path, compress: bool = True) -> Path:
    """One packed patient as a standard OpenKBP file ``data_root/openkbp/<split>/<name>``."""
    with np.load(path, allow_pickle=False) as data:
        fields = unpack_fields({k: data[k] for k in data.files})
    target = data_root / "openkbp" / path.parent.name / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compress else np.savez)(target, **fields)
    return target


def packed_files(pack_root: Path) -> dict[str, list[Path]]:
    """The packed patient files per split (``pack_root/openkbp_pack/<split>/*.npz``)."""
    return {s: sorted((pack_root / PACK / s).glob("*.npz")) for s in SPLITS}


def unpack(pack_root: Path, data_root: Path, workers: int = 0, compress: bool = True) -> dict[str, int]:
    """Every packed patient of ``pack_root`` as standard OpenKBP files under ``data_root/openkbp/`` (with
    ``workers`` processes; 0: in this one; ``np.savez_compressed`` as the shared files, 0.3 s a patient,
    unless ``compress`` is False); the patients per split. An empty pack is refused."""
    files = [p for group in packed_files(pack_root).values() for p in group]
    if not files:
        raise SystemExit(
            f"dose_subset: {pack_root / PACK}: no packed patients (bench/device_pack.py "
            "--subset dose writes them)"
        )
    if workers:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            list(pool.map(unpack_file, files, [data_root] * len(files), [compress] * len(files)))
    else:
        for path in files:
            unpack_file(path, data_root, compress)
    for extra in ("SOURCE.md",):
        if (pack_root / PACK / extra).is_file():
            shutil.copyfile(pack_root / PACK / extra, data_root / "openkbp" / extra)
    return {s: len(list((data_root / "openkbp" / s).glob("*.npz"))) for s in SPLITS}


def counts(pack_root: Path) -> dict[str, int]:
    """Packed patients per split."""
    return {s: len(files) for s, files in packed_files(pack_root).items()}


def _summary(changes: list[dict[str, float]]) -> str:
    if not changes:
        return "no dose packed"
    return (
        f"dose quantization: dose score change at most {max(c['dose_score_gy'] for c in changes):.4f} Gy "
        f"(mean {np.mean([c['dose_score_gy'] for c in changes]):.4f}), voxel at most "
        f"{max(c['max_voxel_gy'] for c in changes):.4f} Gy, DVH metric at most "
        f"{max(c['max_dvh_metric_gy'] for c in changes):.4f} Gy over {len(changes)} patients"
    )


def build(
    source: Path,
    dest: Path,
    per_split: Mapping[str, int] | None = None,
    step_mgy: int = DOSE_STEP_MGY,
    room_bytes: int | None = None,
) -> list[str]:
    """Pack the lowest-id patients of each split (``per_split``, default all 140) into ``dest`` (replaced);
    with ``room_bytes``, instead patients in FILL_ORDER while the pack stays within it. One line per
    split, the quantization summary and the total."""
    shutil.rmtree(dest, ignore_errors=True)
    (dest / PACK).mkdir(parents=True)
    shutil.copyfile(source / "openkbp" / "SOURCE.md", dest / PACK / "SOURCE.md")
    fixed = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) + 4096  # + SUBSET.md
    lines, changes, sizes = [], [], {s: [] for s in SPLITS}
    if room_bytes is None:
        wanted = dict(per_split or ALL)
        unknown = sorted(set(wanted) - set(SPLITS))
        if unknown:
            raise ValueError(f"splits must be among {SPLITS}, got {unknown}")
        for split in SPLITS:
            for path in patient_files(source, split, wanted.get(split, 0)):
                size, change = pack_file(path, dest, step_mgy)
                sizes[split].append(size)
                changes.append(change)
    else:
        queues = {s: patient_files(source, s, ALL[s]) for s in SPLITS}
        used = fixed
        for split in FILL_ORDER:
            if not queues[split]:
                continue
            path = queues[split].pop(0)
            size, change = pack_file(path, dest, step_mgy)
            if used + size > room_bytes:
                (dest / PACK / split / path.name).unlink()
                lines.append(
                    f"{split}/{path.name} ({size / 2**20:.2f} MiB) does not fit: the room left for "
                    f"patients is {(room_bytes - used) / 2**20:.2f} MiB"
                )
                break
            used += size
            sizes[split].append(size)
            changes.append(change)
    for split in SPLITS:
        total = sum(sizes[split])
        lines.append(
            f"{split}: {len(sizes[split])} patients, {total / 2**20:.2f} MiB"
            + (f" ({total / len(sizes[split]) / 2**10:.0f} KiB each)" if sizes[split] else "")
        )
    lines.append(_summary(changes))
    text = __doc__.split("\n\n")[1] + "\n\n" + "\n".join(f"- {line}" for line in lines)
    (dest / "SUBSET.md").write_text(
        f"# {NAME}\n\n{text}\n\nWritten by bench/dose_subset.py (dose step {step_mgy} mGy).\n"
    )
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    lines.append(f"pack total {total / 2**20:.2f} MiB ({total} bytes) in {dest}")
    return lines


def check(pack_root: Path, source: Path | None, max_per_split: int = 1) -> list[str]:
    """Problems with a pack: a split without patients, or (with ``source``, the first ``max_per_split``
    patients of each split) a patient that does not unpack to its shared file (CT, masks and small fields
    equal, dose within half a step)."""
    problems = [f"no {s} patients packed" for s, n in counts(pack_root).items() if not n]
    if not (pack_root / "SUBSET.md").is_file() or not (pack_root / "SUBSET.md").read_text().startswith(
        f"# {NAME}"
    ):
        problems.append(f"{pack_root}/SUBSET.md does not name the {NAME}")
    for split, files in packed_files(pack_root).items() if source is not None else []:
        for path in files[:max_per_split]:
            problems += compare(path, source / "openkbp" / split / path.name)
    return problems


def compare(packed_path: Path, shared_path: Path) -> list[str]:
    """Differences between a packed patient, unpacked, and its shared file."""
    with np.load(packed_path, allow_pickle=False) as data:
        packed = {k: data[k] for k in data.files}
    fields = unpack_fields(packed)
    problems = []
    with np.load(shared_path, allow_pickle=False) as shared:
        if sorted(shared.files) != sorted(fields):
            return [f"{packed_path.name}: keys {sorted(fields)}, shared {sorted(shared.files)}"]
        for key in shared.files:
            a, b = fields[key], shared[key]
            if a.dtype != b.dtype or a.shape != b.shape:
                problems.append(f"{packed_path.name}: {key} {a.dtype}{a.shape}, shared {b.dtype}{b.shape}")
            elif key == "dose_gy":
                half_gy = int(packed["dose_step_mgy"]) / 2000 + 1e-5  # + float32 rounding near 80 Gy
                if float(np.abs(a - b).max()) > half_gy:
                    problems.append(f"{packed_path.name}: dose off by {float(np.abs(a - b).max()):.4g} Gy")
            elif not np.array_equal(a, b):
                problems.append(f"{packed_path.name}: {key} differs")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="the pack root (replaced)")
    parser.add_argument("--source", type=Path, default=None, help="the shared data (default $CTLIB_DATA_DIR)")
    parser.add_argument(
        "--patients",
        nargs="*",
        default=[],
        metavar="SPLIT=N",
        help="lowest-id patients per split (default all: train=80 validation=20 test=40)",
    )
    parser.add_argument("--step-mgy", type=int, default=DOSE_STEP_MGY, help="dose step (1: exact)")
    args = parser.parse_args(argv)
    source = args.source or paths.data_dir(required=True)
    per_split = {k: int(v) for k, v in (item.split("=", 1) for item in args.patients)} or None
    for line in build(source, args.out, per_split, args.step_mgy):
        print(f"dose_subset: {line}")
    problems = check(args.out, source)
    for problem in problems:
        print(f"dose_subset: PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
