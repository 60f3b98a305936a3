"""Structure-name mapping: a case table of clinical ROI names, the refusal policy, the file checks."""

from __future__ import annotations

import pytest

from ctlib.errors import CTInputError
from ctlib.io.openkbp import ROI_NAMES
from ctlib.studies.dose import structure_names

CASES = [
    # canonical names map to themselves
    *[(name, name) for name in ROI_NAMES],
    # parotids: side before/after, abbreviated, glued, upper case
    ("Parotid_L", "LeftParotid"), ("L Parotid", "LeftParotid"), ("PAROTID LT", "LeftParotid"),
    ("Lt_Parotid", "LeftParotid"), ("Parotid Lt", "LeftParotid"), ("Left Parotid Gland", "LeftParotid"),
    ("LParotid", "LeftParotid"), ("parotidl", "LeftParotid"), ("Parotid-Left", "LeftParotid"),
    ("Parotid_R", "RightParotid"), ("R Parotid", "RightParotid"), ("PAROTID RT", "RightParotid"),
    ("Rt_Parotid", "RightParotid"), ("Parotis re", None), ("RtParotid", "RightParotid"),
    # cord, brainstem, oesophagus, larynx, mandible
    ("Cord", "SpinalCord"), ("Spinal Cord", "SpinalCord"), ("SPINAL_CORD", "SpinalCord"),
    ("spinal-cord", "SpinalCord"), ("BrainStem", "Brainstem"), ("Brain Stem", "Brainstem"),
    ("BRAIN_STEM", "Brainstem"), ("Oesophagus", "Esophagus"), ("esophagus", "Esophagus"),
    ("Esoph", "Esophagus"), ("LARYNX", "Larynx"), ("Bone_Mandible", "Mandible"), ("Mandible", "Mandible"),
    # targets in Gy, cGy, with units and separators
    ("PTV_70", "PTV70"), ("PTV 70Gy", "PTV70"), ("PTV7000", "PTV70"), ("PTV_7000", "PTV70"),
    ("ptv70", "PTV70"), ("PTV 69.96", "PTV70"), ("PTV_6300cGy", "PTV63"), ("PTV 63 Gy", "PTV63"),
    ("PTV5600", "PTV56"), ("PTV_56Gy", "PTV56"),
    # refusals: derived structures, ambiguous sides, unknown levels, non-PTV targets
    ("SpinalCord_PRV5", None), ("Cord PRV", None), ("Brainstem_PRV", None), ("Parotid_L_opt", None),
    ("PTV70_eval", None), ("PTV_High", None), ("PTV66", None), ("PTV", None), ("PTV 70 63", None),
    ("CTV70", None), ("GTV", None), ("Parotid", None), ("Parotids", None), ("Parotid L+R", None),
    ("Brainstem_L", None), ("Larynx 2", None), ("External", None), ("BODY", None), ("", None), ("__", None),
    ("Lens_L", None), ("Cochlea_R", None),
]


@pytest.mark.parametrize("raw, expected", CASES)
def test_canonical_name_case_table(raw, expected):
    assert structure_names.canonical_name(raw) == expected


def test_match_name_says_why_it_refuses():
    assert "side" in structure_names.match_name("Parotid").reason
    assert "66 Gy" in structure_names.match_name("PTV66").reason
    assert "unrecognized" in structure_names.match_name("PTV70_eval").reason
    assert structure_names.match_name("PTV7000").reason == "target at 70 Gy"


def test_map_roi_names_keeps_matches_and_refuses_duplicates():
    mapping = structure_names.map_roi_names(["BODY", "Parotid_L", "Cord", "PTV 70Gy"], source="rs.dcm")
    assert mapping == {"LeftParotid": "Parotid_L", "SpinalCord": "Cord", "PTV70": "PTV 70Gy"}
    with pytest.raises(CTInputError, match=r"rs\.dcm.*'Cord' and 'Spinal Cord' both map to SpinalCord"):
        structure_names.map_roi_names(["Cord", "Spinal Cord"], source="rs.dcm")


def test_mapping_file_checks(tmp_path):
    good = structure_names.load_mapping()
    assert good.organs["oesophagus"] == "Esophagus"
    assert good.paired["parotid"] == ("LeftParotid", "RightParotid")
    text = (tmp_path / "ok.yaml")
    base = """
laterality: {left: [l], right: [r]}
organs: {ORGANS}
paired_organs: {Parotid: {left: LeftParotid, right: RightParotid, variants: [parotid]}}
targets: {words: [ptv], levels_gy: {PTV70: 70}, tolerance_gy: 0.5, unit_words: [gy]}
"""
    text.write_text(base.replace("{ORGANS}", "{Brainstem: [brainstem, parotid]}"))
    with pytest.raises(ValueError, match="listed for both"):
        structure_names.load_mapping.__wrapped__(text)
    text.write_text(base.replace("{ORGANS}", "{Brain: [brain]}"))
    with pytest.raises(ValueError, match="not an OpenKBP ROI name"):
        structure_names.load_mapping.__wrapped__(text)
    text.write_text(base.replace("{ORGANS}", "{Brainstem: [Brain_Stem]}"))
    with pytest.raises(ValueError, match="not normalized"):
        structure_names.load_mapping.__wrapped__(text)
