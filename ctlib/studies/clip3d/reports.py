"""Template radiology reports for generated studies: findings and impressions from a label dict.

Method: per positive finding, one of several sentences naming it in varied words (``POSITIVE``);
explicit negations for a random subset of the absent ones (``NEGATIVE``), never for a finding whose
close relative is present (``RELATED``: no "no focal opacity" next to a consolidation); 1-3 distractor
sentences (technique, normal anatomy) that name no finding; all shuffled after the technique line.
The impression lists the positives in short forms (``IMPRESSION``), or says "No acute cardiopulmonary
abnormality." Every positive sentence contains one of ``KEYWORDS[finding]``, so tests can check that
a report mentions each positive finding.
"""

from __future__ import annotations

import numpy as np

POSITIVE: dict[str, tuple[str, ...]] = {
    "Lung nodule": (
        "A solid pulmonary nodule is seen in the {side} lung.",
        "There is a well-defined nodular opacity in the {side} lung parenchyma.",
        "A {size} mm nodule is noted in the {side} lung.",
        "Small solid lung nodule in the {side} hemithorax.",
    ),
    "Pleural effusion": (
        "There is a {side} pleural effusion layering dependently.",
        "A dependent {side} pleural fluid collection is present.",
        "{Side} pleural effusion with adjacent compressive changes.",
    ),
    "Pericardial effusion": (
        "There is a pericardial effusion.",
        "Fluid is seen in the pericardial space.",
        "A circumferential pericardial fluid collection is present.",
    ),
    "Lung opacity": (
        "Patchy ground-glass opacities are present in the {side} lung.",
        "There is an area of increased lung attenuation with ground-glass appearance in the {side} lung.",
        "Ground glass density is seen in the {side} lung.",
    ),
    "Consolidation": (
        "There is a focal consolidation in the {side} lung.",
        "Airspace consolidation is seen in the {side} lower zone.",
        "A dense consolidative area with possible air bronchograms is noted in the {side} lung.",
    ),
    "Emphysema": (
        "Centrilobular emphysematous changes are seen, predominantly in the upper lobes.",
        "There is emphysema in both lungs.",
        "Areas of low attenuation consistent with emphysema are present.",
    ),
    "Arterial wall calcification": (
        "Atherosclerotic calcifications are seen in the aortic wall.",
        "There are calcified plaques along the thoracic aorta wall.",
        "Aortic wall calcification is noted.",
    ),
    "Coronary artery wall calcification": (
        "Coronary artery calcifications are present.",
        "Calcified plaques are seen along the course of the coronary arteries.",
        "There is calcification of the left anterior descending coronary artery.",
    ),
    "Cardiomegaly": (
        "The heart is enlarged.",
        "Cardiomegaly is present.",
        "The cardiac silhouette is increased in size.",
    ),
    "Medical material": (
        "A cardiac device with its lead is seen in the anterior chest wall.",
        "Medical material: an implanted port with a catheter is present.",
        "A metallic device and lead are noted in the chest.",
    ),
}
KEYWORDS: dict[str, tuple[str, ...]] = {
    "Lung nodule": ("nodule", "nodular"),
    "Pleural effusion": ("pleural effusion", "pleural fluid"),
    "Pericardial effusion": ("pericardial effusion", "pericardial fluid", "pericardial space"),
    "Lung opacity": ("ground-glass", "ground glass"),
    "Consolidation": ("consolidation", "consolidative"),
    "Emphysema": ("emphysema", "emphysematous"),
    "Arterial wall calcification": ("aortic wall", "aorta wall", "aortic calcification"),
    "Coronary artery wall calcification": ("coronary",),
    "Cardiomegaly": ("heart is enlarged", "cardiomegaly", "cardiac silhouette is increased"),
    "Medical material": ("device", "port", "medical material"),
}
NEGATIVE: dict[str, tuple[str, ...]] = {
    "Lung nodule": ("No pulmonary nodule is seen.", "No suspicious nodular lesion."),
    "Pleural effusion": ("No pleural effusion.", "There is no pleural fluid."),
    "Pericardial effusion": ("No pericardial effusion.", "The pericardium is unremarkable without effusion."),
    "Lung opacity": ("No ground-glass opacity.",),
    "Consolidation": ("No consolidation.", "There is no airspace consolidation."),
    "Emphysema": ("No emphysema.", "No emphysematous change."),
    "Arterial wall calcification": ("No aortic wall calcification.",),
    "Coronary artery wall calcification": ("No coronary artery calcification.",),
    "Cardiomegaly": ("Heart size is normal.", "No cardiomegaly."),
    "Medical material": ("No implanted device is seen.",),
}
RELATED: dict[str, tuple[str, ...]] = {
    "Lung opacity": ("Consolidation",),
    "Consolidation": ("Lung opacity",),
    "Cardiomegaly": ("Pericardial effusion",),
    "Pericardial effusion": ("Cardiomegaly",),
}
IMPRESSION: dict[str, tuple[str, ...]] = {
    "Lung nodule": ("Pulmonary nodule.", "Lung nodule, follow-up suggested."),
    "Pleural effusion": ("Pleural effusion.",),
    "Pericardial effusion": ("Pericardial effusion.",),
    "Lung opacity": ("Ground-glass opacity.",),
    "Consolidation": ("Consolidation.", "Consolidation, possibly infectious."),
    "Emphysema": ("Emphysema.",),
    "Arterial wall calcification": ("Aortic wall calcification.",),
    "Coronary artery wall calcification": ("Coronary artery calcification.",),
    "Cardiomegaly": ("Cardiomegaly.",),
    "Medical material": ("Implanted device (medical material).",),
}
TECHNIQUE = (
    "Axial CT images of the thorax were obtained.",
    "Chest CT was performed with thin axial sections.",
    "CT of the chest was acquired in the supine position.",
)
DISTRACTORS = (
    "The trachea and main bronchi are patent.",
    "Thoracic vertebral bodies are of normal height.",
    "The thyroid gland is unremarkable in the included sections.",
    "No mediastinal mass is identified.",
    "The visualised upper abdominal organs are unremarkable.",
    "Mild degenerative changes are seen in the thoracic spine.",
    "The esophagus is normal in calibre.",
    "Soft tissues of the chest wall are unremarkable.",
)
NORMAL_IMPRESSION = ("No acute cardiopulmonary abnormality.", "Unremarkable chest CT.")


def _fill(sentence: str, rng: np.random.Generator) -> str:
    side = str(rng.choice(["right", "left"]))
    return sentence.format(side=side, Side=side.capitalize(), size=int(rng.integers(5, 21)))


def generate_report(
    labels: dict[str, bool], rng: np.random.Generator, *, negation_rate: float = 0.5
) -> tuple[str, str]:
    """Template report ``(findings_text, impressions_text)`` for ``labels`` (module docstring).

    Findings without templates (not generated in this set) are neither stated nor negated.
    """
    positives = [f for f, on in labels.items() if on and f in POSITIVE]
    absent = [f for f, on in labels.items() if not on and f in NEGATIVE]
    sentences = [_fill(str(rng.choice(POSITIVE[f])), rng) for f in positives]
    for f in absent:
        if any(labels.get(r, False) for r in RELATED.get(f, ())):
            continue
        if rng.random() < negation_rate:
            sentences.append(str(rng.choice(NEGATIVE[f])))
    n_distract = int(rng.integers(1, 4))
    sentences += [str(s) for s in rng.choice(DISTRACTORS, size=n_distract, replace=False)]
    order = rng.permutation(len(sentences))
    findings_text = " ".join([str(rng.choice(TECHNIQUE))] + [sentences[i] for i in order])
    if positives:
        impressions = [str(rng.choice(IMPRESSION[f])) for f in rng.permutation(positives)]
        impressions_text = " ".join(impressions)
    else:
        impressions_text = str(rng.choice(NORMAL_IMPRESSION))
    return findings_text, impressions_text
