"""An offline WordPiece tokenizer (Wu et al. 2016) trained with Hugging Face ``tokenizers`` on report text.

The training text must include the zero-shot prompt templates, or words that appear only in prompts
("not", "present") split into pieces. Lower-cased, BERT pre-tokenization, ``[CLS] text [SEP]`` with
[PAD] padding; serialised as the library's JSON (no pickle).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 1) -> Tokenizer:
    """A WordPiece tokenizer fitted to ``texts`` (reports and prompt templates)."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS)
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tokenizer


def from_json(text: str) -> Tokenizer:
    """The tokenizer that ``Tokenizer.to_str()`` wrote."""
    return Tokenizer.from_str(text)


def encode(
    tokenizer: Tokenizer, texts: Sequence[str], max_tokens: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (B, T), mask (B, T) bool)`` with ``T = min(max_tokens, longest)``; long texts are truncated."""
    pad = tokenizer.token_to_id("[PAD]")
    encoded = [tokenizer.encode(t).ids[:max_tokens] for t in texts]
    length = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), length), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.bool)
    for row, e in enumerate(encoded):
        ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
        mask[row, : len(e)] = True
    return ids, mask
