"""An offline WordPiece tokenizer (Wu et al. 2016) for report text, run by Hugging Face ``tokenizers``.

The vocabulary is built here, deterministically: the special tokens, every character seen (alone and as a
``##`` continuation, so no word is ever unknown), then whole words by decreasing count (ties
alphabetical) up to ``vocab_size``. The library's own ``WordPieceTrainer`` was not used because it gave
a different vocabulary in every process on the same text (measured: three runs, three vocabularies),
which made seeded training irreproducible. Encoding is the library's greedy longest-match WordPiece.
The training text must include the zero-shot prompt templates, or words that appear only in prompts
("not", "present") split into characters. Lower-cased, BERT pre-tokenization, ``[CLS] text [SEP]``
with [PAD] padding; serialised as the library's JSON (no pickle).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> Tokenizer:
    """A WordPiece tokenizer whose vocabulary is the characters and most frequent whole words of ``texts``."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({c for word in counts for c in word})
    vocab = [*SPECIAL_TOKENS, *characters, *(f"##{c}" for c in characters)]
    if vocab_size < len(vocab):
        raise ValueError(f"vocab_size {vocab_size} is below the {len(vocab)} special and character tokens")
    known = set(vocab)
    words = [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if w not in known]
    vocab += words[: vocab_size - len(vocab)]
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
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
