"""The generated demonstration set: real chest anatomies with inserted synthetic findings and reports.

Each study is one base anatomy (``anatomy.BaseAnatomy``), deformed and cropped at random
(``augment.deform_anatomy``), with findings drawn independently at a controlled prevalence and
inserted (``synthetic_findings.FINDING_INSERTERS``), its intensities perturbed
(``augment.perturb_intensity``), a label vector over all 18 ``findings.FINDINGS`` (1 where inserted,
0 otherwise: never NaN) and a template report (``reports.generate_report``). A finding whose
structure the base lacks (no heart in an upper-chest scan) is always 0 for that base.

Performance on this set demonstrates that the pipeline runs end to end and can learn what was
inserted; it says nothing about clinical accuracy. The anatomy of every study of one base is the same
patient, so the patient id is the base name and ``assign_base_splits`` puts each base in one split.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from ctlib.data import splits
from ctlib.io.volume import Volume
from ctlib.studies.clip3d import augment, reports, synthetic_findings
from ctlib.studies.clip3d import findings as findings_mod
from ctlib.studies.clip3d.anatomy import STRUCTURES, BaseAnatomy
from ctlib.studies.clip3d.h5store import Study

GENERATED_FINDINGS: tuple[str, ...] = tuple(
    f for f in findings_mod.FINDINGS if f in synthetic_findings.FINDING_INSERTERS
)


def _rng(seed: int, base: str, k: int, stream: int) -> np.random.Generator:
    """Independent stream per (seed, base, study, purpose): a study does not depend on the others."""
    return np.random.default_rng([int(seed), zlib.crc32(base.encode()), int(k), int(stream)])


def _prevalence(prevalence: float | Mapping[str, float], finding: str) -> float:
    p = float(prevalence[finding]) if isinstance(prevalence, Mapping) else float(prevalence)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"prevalence of {finding!r} must be in [0, 1], got {p}")
    return p


def draw_labels(
    base: BaseAnatomy,
    rng: np.random.Generator,
    prevalence: float | Mapping[str, float],
    findings: Sequence[str] = GENERATED_FINDINGS,
) -> dict[str, bool]:
    """Independent Bernoulli draws per finding (``prevalence``), 0 where the base lacks the structure.

    Returns a dict over all 18 ``FINDINGS`` (False for those not in ``findings``). One uniform draw is
    made per finding in ``findings`` whether or not the base can show it, so draws line up across bases.
    """
    unknown = sorted(set(findings) - set(synthetic_findings.FINDING_INSERTERS))
    if unknown:
        raise ValueError(f"no inserter for finding(s) {unknown}; available: {list(GENERATED_FINDINGS)}")
    labels = dict.fromkeys(findings_mod.FINDINGS, False)
    for f in findings:
        u = rng.random()
        labels[f] = bool(u < _prevalence(prevalence, f)) and synthetic_findings.can_insert(base, f)
    return labels


def synthesize(base: BaseAnatomy, labels: Mapping[str, bool], rng: np.random.Generator) -> BaseAnatomy:
    """Deform the base, insert every positive finding in registry order, perturb intensities."""
    scene = augment.deform_anatomy(base, rng)
    for finding, inserter in synthetic_findings.FINDING_INSERTERS.items():
        if labels.get(finding, False):
            scene = inserter(scene, rng)
    return scene.replace(hu=augment.perturb_intensity(scene.hu, rng))


def study_volume(base: BaseAnatomy, labels: Mapping[str, bool], seed: int, k: int) -> Volume:
    """The volume of study ``k`` of ``base`` (deterministic in ``seed``, ``base.name`` and ``k``)."""
    scene = synthesize(base, labels, _rng(seed, base.name, k, 1))
    volume = scene.to_volume()
    volume.meta.update(study=f"{base.name}_{k:04d}", generated=True)
    return volume


def generate_studies(
    bases: Sequence[BaseAnatomy],
    n_per_base: int,
    prevalence: float | Mapping[str, float],
    seed: int,
    findings: Sequence[str] = GENERATED_FINDINGS,
) -> list[Study]:
    """``n_per_base`` generated studies per base as ``h5store.Study`` rows (volumes built lazily).

    Labels and reports are drawn now; ``Study.load`` builds the volume on demand (``study_volume``),
    so a split is generated while ``h5store.write_split`` writes it. ``patient_id`` is the base name:
    every study of a base shares its anatomy, and the patient-wise bootstrap and the leak test must see
    them as one patient. ``volume_name`` is ``f"{base}_{k:04d}"``. The working grid is the bases'
    (``anatomy.DEFAULT_SPACING_MM``); ``write_split`` fits it to the stored shape.
    """
    if n_per_base < 1:
        raise ValueError(f"n_per_base must be >= 1, got {n_per_base}")
    names = [b.name for b in bases]
    if len(set(names)) != len(names):
        raise ValueError(f"base names must be unique, got {names}")
    studies = []
    for base in bases:
        for k in range(int(n_per_base)):
            labels = draw_labels(base, _rng(seed, base.name, k, 0), prevalence, findings)
            text, impression = reports.generate_report(labels, _rng(seed, base.name, k, 2))
            vector = np.array([labels[f] for f in findings_mod.FINDINGS], dtype=np.float32)
            studies.append(
                Study(
                    volume_name=f"{base.name}_{k:04d}",
                    patient_id=base.name,
                    load=lambda base=base, labels=labels, k=k: study_volume(base, labels, seed, k),
                    source=f"generated:{base.name}:{k}",
                    labels=vector,
                    findings_text=text,
                    impressions_text=impression,
                )
            )
    return studies


def assign_base_splits(
    base_names: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
    fixed: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``{base name: split}`` by ``ctlib.data.splits.make_splits`` over bases, so that every study of a
    base (one anatomy, one patient) lands in one split only; ``fixed`` forces some bases' splits."""
    return splits.make_splits(list(base_names), fractions, seed, fixed=fixed)


def z_parts(base: BaseAnatomy, parts: int) -> list[BaseAnatomy]:
    """``base`` cut into ``parts`` disjoint z-ranges of equal height, each a base named ``<name>_z<k>``.

    For the wiring check on one embedded CT, which needs one anatomy per split: the parts share no
    voxel but are one patient, so numbers on them are not a held-out-patient result.
    """
    if parts < 1 or parts > base.shape[0]:
        raise ValueError(f"parts must be in [1, {base.shape[0]}], got {parts}")
    edges = np.linspace(0, base.shape[0], int(parts) + 1).round().astype(int)
    out = []
    for k, (z0, z1) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        cut = slice(int(z0), int(z1))
        arrays = {s: (None if getattr(base, s) is None else getattr(base, s)[cut].copy()) for s in STRUCTURES}
        origin = tuple(np.asarray(base.origin) + np.array([0.0, 0.0, z0 * base.spacing_mm]))
        out.append(base.replace(name=f"{base.name}_z{k}", hu=base.hu[cut].copy(), origin=origin, **arrays))
    return out
