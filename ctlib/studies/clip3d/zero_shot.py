"""Zero-shot finding detection with a CT-CLIP model (Hamamci et al. 2024): for each finding and each
prompt template, a 2-way softmax over the volume's similarity to "<finding> is present." and
"<finding> is not present.", averaged over templates.

``scores[i, f] = mean_t softmax(s * [cos(v_i, pos_tf), cos(v_i, neg_tf)])[0]`` with ``s`` the model's
inverse temperature. The prompts must be in the tokenizer's training text (``prompt_texts``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from ctlib.models import report_tokenizer
from ctlib.models.ct_clip import CTClip
from ctlib.studies.clip3d.findings import FINDINGS

TEMPLATES: tuple[tuple[str, str], ...] = (
    ("{} is present.", "{} is not present."),
    ("There is {}.", "There is no {}."),
    ("Findings consistent with {}.", "No evidence of {}."),
)


def prompt_pairs(
    findings: Sequence[str] = FINDINGS, templates: Sequence[tuple[str, str]] = TEMPLATES
) -> list[list[tuple[str, str]]]:
    """``[finding][template] -> (positive, negative)`` prompts; the finding name is lower-cased after
    the first word of a sentence (``"Lung nodule is present."``, ``"There is lung nodule."``)."""
    pairs = []
    for finding in findings:
        row = []
        for positive, negative in templates:
            texts = []
            for template in (positive, negative):
                name = finding if template.startswith("{}") else finding.lower()
                texts.append(template.format(name))
            row.append((texts[0], texts[1]))
        pairs.append(row)
    return pairs


def prompt_texts(
    findings: Sequence[str] = FINDINGS, templates: Sequence[tuple[str, str]] = TEMPLATES
) -> list[str]:
    """Every prompt, flat: add them to the tokenizer's training text."""
    return [text for row in prompt_pairs(findings, templates) for pair in row for text in pair]


@torch.no_grad()
def prompt_embeddings(
    model: CTClip,
    tokenizer: Tokenizer,
    findings: Sequence[str] = FINDINGS,
    templates: Sequence[tuple[str, str]] = TEMPLATES,
    max_tokens: int = 32,
) -> torch.Tensor:
    """``(F, T, 2, E)`` unit text embeddings of the positive and negative prompts."""
    texts = prompt_texts(findings, templates)
    device = next(model.parameters()).device
    ids, mask = report_tokenizer.encode(tokenizer, texts, max_tokens)
    embedded = model.encode_text(ids.to(device), mask.to(device))
    return embedded.reshape(len(findings), len(templates), 2, -1)


@torch.no_grad()
def zero_shot_scores(model: CTClip, volume_embeddings: torch.Tensor, prompts: torch.Tensor) -> np.ndarray:
    """``(N, F)`` probabilities that each finding is present (template-averaged 2-way softmax)."""
    similarity = torch.einsum("ne,ftke->nftk", volume_embeddings.float(), prompts.float())
    probabilities = (model.scale().float() * similarity).softmax(dim=-1)[..., 0]
    return probabilities.mean(dim=-1).cpu().numpy()
