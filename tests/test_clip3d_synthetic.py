"""Generated demonstration set of the clip3d study: anatomy masks, finding inserters, reports, splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from ctlib.data import splits
from ctlib.studies.clip3d import anatomy, anatomy_masks, demo_set, h5store, reports
from ctlib.studies.clip3d import findings as findings_mod
from ctlib.studies.clip3d import synthetic_findings as sf


@pytest.fixture(scope="module")
def base(one_torch_thread) -> anatomy.BaseAnatomy:
    return anatomy.embedded_base()


def test_heuristic_masks_match_embedded_labels(base):
    heuristic = anatomy.embedded_base(heuristic_masks=True)
    assert heuristic.shape == base.shape
    assert anatomy_masks.dice(heuristic.lungs, base.lungs) > 0.95  # measured 0.98
    assert anatomy_masks.dice(heuristic.heart, base.heart) > 0.6  # measured 0.68
    assert heuristic.mask_method["heart"] == "heuristic" and base.mask_method["heart"] == "labels"


def test_aorta_heuristic_lands_on_the_aorta(base):
    """On the embedded CT made to look non-contrast (blood pool outside bone set to 40 HU), the
    descending-aorta tube lies on the labelled aorta (measured precision 0.88, 0.996 within a voxel)."""
    hu = base.hu.copy()
    hu[base.heart | base.aorta] = 40.0
    hu[(hu > 150.0) & ~base.bone & anatomy_masks.between_lungs(base.lungs)] = 40.0
    bone = anatomy_masks.bone_mask(hu, base.body, base.spacing_mm)
    heart = anatomy_masks.heart_mask(hu, base.lungs, bone, base.spacing_mm)
    tube = anatomy_masks.aorta_mask(hu, base.lungs, bone, heart, base.spacing_mm)
    assert tube.sum() > 300
    assert (tube & ndimage.binary_dilation(base.aorta)).sum() / tube.sum() > 0.9


def _changed(before: anatomy.BaseAnatomy, after: anatomy.BaseAnatomy) -> np.ndarray:
    return after.hu != before.hu


def _near(mask: np.ndarray, mm: float, spacing_mm: float) -> np.ndarray:
    return ndimage.distance_transform_edt(~mask) * spacing_mm <= mm


# finding -> (region the changed voxels must lie in, HU range of the changed voxels)
CASES = {
    "Lung nodule": (lambda b, a: b.lungs, (-1100.0, 4000.0)),
    "Pleural effusion": (lambda b, a: b.lungs, (-30.0, 50.0)),
    "Pericardial effusion": (
        lambda b, a: _near(b.heart, 20.0, b.spacing_mm) & ~b.heart & b.body,
        (-30.0, 55.0),
    ),
    "Lung opacity": (lambda b, a: b.lungs, (-1000.0, -240.0)),
    "Consolidation": (lambda b, a: b.lungs, (-1000.0, 110.0)),
    "Emphysema": (lambda b, a: b.lungs, (-1000.0, -950.0)),
    "Arterial wall calcification": (lambda b, a: sf.wall_shell(b.aorta), (200.0, 1000.0)),
    "Coronary artery wall calcification": (lambda b, a: sf.wall_shell(b.heart), (200.0, 1000.0)),
    "Cardiomegaly": (lambda b, a: a.heart & ~b.bone & b.body, (-1024.0, 3071.0)),
    "Medical material": (lambda b, a: b.body, (2000.0, 3071.0)),
}


def test_registry_covers_exact_names():
    assert set(sf.FINDING_INSERTERS) <= set(findings_mod.FINDINGS)
    assert len(sf.FINDING_INSERTERS) >= 8 and set(CASES) == set(sf.FINDING_INSERTERS)
    assert set(reports.POSITIVE) == set(sf.FINDING_INSERTERS) == set(sf.REQUIRES)


@pytest.mark.parametrize("finding", list(CASES))
def test_inserter_stays_in_its_anatomy_with_plausible_hu(base, finding):
    region_of, (lo, hi) = CASES[finding]
    before_hu = base.hu.copy()
    after = sf.FINDING_INSERTERS[finding](base, np.random.default_rng(3))
    np.testing.assert_array_equal(base.hu, before_hu)  # the base is never modified
    changed = _changed(base, after)
    assert changed.any(), finding
    assert not (changed & ~region_of(base, after)).any(), finding
    values = after.hu[changed]
    assert lo <= values.min() and values.max() <= hi, (finding, values.min(), values.max())
    again = sf.FINDING_INSERTERS[finding](base, np.random.default_rng(3))
    np.testing.assert_array_equal(again.hu, after.hu)  # deterministic given the seed


@pytest.mark.parametrize("diameter_mm", [10.0, 16.0])
def test_nodule_volume_matches_its_diameter(base, diameter_mm):
    value = 30.0
    after = sf.insert_nodule(base, np.random.default_rng(0), diameter_mm=diameter_mm, hu_value=value, count=1)
    old, new = base.hu.astype(np.float64), after.hu.astype(np.float64)
    usable = np.abs(value - old) > 100.0  # the partial-volume fraction is (new - old) / (value - old)
    fraction = np.where(usable, (new - old) / np.where(usable, value - old, 1.0), 0.0)
    sphere_vox = np.pi / 6.0 * diameter_mm**3 / base.spacing_mm**3
    assert abs(fraction.sum() / sphere_vox - 1.0) < 0.15
    core = after.hu[fraction > 0.99]
    assert core.size and 0.0 <= np.median(core) <= 60.0


def test_cardiomegaly_grows_heart_and_displaces_lung(base):
    after = sf.insert_cardiomegaly(base, np.random.default_rng(1), scale=1.15)
    assert after.heart.sum() >= 1.3 * base.heart.sum()
    assert after.lungs.sum() < base.lungs.sum()
    assert not (after.heart & after.lungs).any()


def test_pleural_effusion_is_dependent(base):
    after = sf.insert_pleural_effusion(base, np.random.default_rng(2), thickness_mm=30.0, side="both")
    fluid = base.lungs & ~after.lungs
    lung_y = np.argwhere(base.lungs)[:, 1].mean()
    assert np.argwhere(fluid)[:, 1].mean() > lung_y  # posterior (+y in LPS): dependent when supine
    lung_z = np.argwhere(base.lungs)[:, 0].mean()
    assert np.argwhere(fluid)[:, 0].mean() < lung_z  # at the lung base


def test_prevalence_within_binomial_tolerance(base):
    n, p = 400, 0.3
    rows = [demo_set.draw_labels(base, np.random.default_rng([7, k]), p) for k in range(n)]
    sd = np.sqrt(n * p * (1 - p))
    for finding in demo_set.GENERATED_FINDINGS:
        count = sum(r[finding] for r in rows)
        assert abs(count - n * p) < 4 * sd, (finding, count)
    others = set(findings_mod.FINDINGS) - set(demo_set.GENERATED_FINDINGS)
    assert not any(r[f] for r in rows for f in others)
    rows = [
        demo_set.draw_labels(base, np.random.default_rng(k), {"Lung nodule": 1.0}, ["Lung nodule"])
        for k in range(5)
    ]
    assert all(r["Lung nodule"] and sum(r.values()) == 1 for r in rows)


def test_missing_structure_forces_negative(base):
    no_heart = base.replace(heart=None)
    rows = [demo_set.draw_labels(no_heart, np.random.default_rng(k), 1.0) for k in range(5)]
    assert not any(r["Cardiomegaly"] or r["Pericardial effusion"] for r in rows)
    assert all(r["Lung nodule"] for r in rows)


def test_reports_mention_positives_and_never_negate_them():
    rng = np.random.default_rng(0)
    texts = set()
    for _ in range(300):
        labels = {f: bool(rng.random() < 0.3) for f in findings_mod.FINDINGS}
        text, impression = reports.generate_report(labels, rng)
        texts.add(text)
        lower = text.lower()
        for f, on in labels.items():
            if on and f in reports.POSITIVE:
                assert any(k in lower for k in reports.KEYWORDS[f]), (f, text)
                assert not any(neg in text for neg in reports.NEGATIVE[f]), (f, text)
        if not any(labels[f] for f in reports.POSITIVE):
            assert impression in reports.NORMAL_IMPRESSION
    assert len(texts) == 300  # varied phrasing, order and distractors
    negated = reports.generate_report(
        dict.fromkeys(findings_mod.FINDINGS, False), np.random.default_rng(1), negation_rate=1.0
    )
    assert "pleural" in negated[0].lower()


def test_studies_deterministic_and_base_is_the_patient(base):
    small = base.replace(hu=base.hu[30:60], **{s: getattr(base, s)[30:60] for s in anatomy.STRUCTURES})
    first = demo_set.generate_studies([small], 2, 0.5, seed=4)
    again = demo_set.generate_studies([small], 2, 0.5, seed=4)
    other = demo_set.generate_studies([small], 2, 0.5, seed=5)
    for a, b in zip(first, again, strict=True):
        assert a.patient_id == base.name and a.volume_name.startswith(base.name)
        assert a.labels.shape == (len(findings_mod.FINDINGS),) and not np.isnan(a.labels).any()
        assert (a.findings_text, a.impressions_text) == (b.findings_text, b.impressions_text)
        np.testing.assert_array_equal(a.load().array, b.load().array)
    assert not np.array_equal(first[0].load().array, other[0].load().array)


def test_base_splits_keep_each_base_in_one_split():
    names = [f"base{i}" for i in range(9)]
    split_of = demo_set.assign_base_splits(names, {"train": 0.6, "validation": 0.2, "test": 0.2}, seed=0)
    assert set(split_of) == set(names) and set(split_of.values()) == {"train", "validation", "test"}
    rows = [
        {"volume_id": f"{b}_{k:04d}", "patient_id": b, "split": split_of[b]} for b in names for k in range(3)
    ]
    splits.check_no_leak(pd.DataFrame(rows))


def test_shared_bases_generate_and_store(data_root, tmp_path, one_torch_thread):
    bases = anatomy.shared_bases(data_root)
    assert {b.name for b in bases} == set(anatomy.SHARED_BASES)
    for b in bases:
        assert b.spacing_mm == anatomy.DEFAULT_SPACING_MM
        assert b.lungs.sum() > 0.05 * b.body.sum(), b.name
        spec = anatomy.SHARED_BASES[b.name]
        assert b.has("heart") == ("heart" in spec["structures"]), b.name
    studies = demo_set.generate_studies(bases, 1, 1.0, seed=0)
    thin = next(s for s in studies if s.patient_id == "thin_lungfcp_0001")
    assert thin.labels[findings_mod.FINDINGS.index("Cardiomegaly")] == 0  # no heart in view
    path = tmp_path / "demo.h5"
    h5store.write_split(path, studies, (24, 32, 32))
    with h5store.SplitFile(path) as split:
        assert len(split) == len(bases) and split.patient_ids == [b.name for b in bases]
        np.testing.assert_array_equal(split.labels, np.stack([s.labels for s in studies]))
