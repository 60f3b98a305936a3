"""Retrieval training (label-set classes, balanced batches, augmentation, both loss modes), validation
during training (best checkpoint, TensorBoard) and the held-out evaluation helpers, on tiny CPU tensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ctlib.errors import CTInputError
from ctlib.metrics import retrieval
from ctlib.models.volume_embedder import (
    VolumeEmbedder,
    VolumeEmbedderConfig,
    get_embeddings,
    volumes_to_input,
)
from ctlib.runs.record import RunRecord
from ctlib.studies.retrieval import evaluation, f1_loss, mining, run_kind, training, validation
from ctlib.studies.retrieval.dataset import RetrievalSplit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (8, 8, 8)
NO_AUGMENT = {"augment_degrees": 0.0, "augment_translate": 0.0, "augment_scale": 0.0, "noise_std": 0.0}


def embedder(n_classes: int = 0, seed: int = 0) -> VolumeEmbedder:
    torch.manual_seed(seed)
    config = VolumeEmbedderConfig(input_shape=SHAPE, widths=(2, 4), embedding_dim=6, n_classes=n_classes,
                                  dropout=0.0)  # fmt: skip
    return VolumeEmbedder(config)


def make_split(n: int, seed: int, n_labels: int = 3) -> RetrievalSplit:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, n_labels)) < 0.5).astype(np.uint8)
    return RetrievalSplit(
        path=Path(f"split{seed}.npz"), volumes=rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8),
        labels=labels,
        label_names=[f"l{i}" for i in range(n_labels)], case_ids=[f"c{seed}_{i}" for i in range(n)],
        patient_ids=[f"p{i}" for i in range(n)], sources=["src"] * n, window_hu=(-1000.0, 1000.0),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- batches
def test_label_set_classes_number_label_sets_in_first_seen_order():
    rows = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]], np.uint8)
    np.testing.assert_array_equal(training.label_set_classes(rows), [0, 1, 0, 2, 1, 3])
    np.testing.assert_array_equal(training.label_set_classes(rows.astype(np.float32)), [0, 1, 0, 2, 1, 3])


def test_balanced_order_gives_n_classes_times_n_samples_batches():
    rows = np.repeat(np.eye(5, dtype=np.uint8), [3, 2, 4, 2, 1], axis=0)  # 5 label sets, one with 1 member
    classes = training.label_set_classes(rows)
    config = training.LossConfig(n_classes=3, n_samples=2)
    order = training.balanced_order(rows, config, batches=6, seed=0)
    assert order.shape == (36,) and config.batch_size == 6 and order.max() < len(rows)
    for batch in order.reshape(6, 6):
        ids, counts = np.unique(classes[batch], return_counts=True)
        assert len(ids) == 3 and counts.tolist() == [2, 2, 2], classes[batch]
        assert all(classes[batch[2 * j]] == classes[batch[2 * j + 1]] for j in range(3))  # grouped by class
    np.testing.assert_array_equal(order, training.balanced_order(rows, config, batches=6, seed=0))
    assert not np.array_equal(order, training.balanced_order(rows, config, batches=6, seed=1))


def test_retrieval_dataset_reads_through_the_order():
    split = make_split(5, seed=0)
    plain, ordered = training.RetrievalDataset(split), training.RetrievalDataset(split, order=[4, 4, 1])
    assert len(plain) == 5 and len(ordered) == 3
    item = ordered[1]
    assert item["volume"].dtype == torch.uint8 and item["volume"].shape == SHAPE
    assert item["labels"].dtype == torch.float32
    np.testing.assert_array_equal(item["volume"].numpy(), split.volumes[4])
    np.testing.assert_array_equal(ordered[2]["labels"].numpy(), split.labels[1])
    np.testing.assert_array_equal(plain[3]["volume"].numpy(), split.volumes[3])


# ------------------------------------------------------------------------------------------- augmentation
def test_augment_is_the_identity_in_eval_and_changes_the_input_in_training():
    augment = training.Augment(training.LossConfig())
    x = torch.rand(2, 1, *SHAPE) * 2 - 1
    assert augment.eval()(x) is x
    torch.manual_seed(0)
    y = augment.train()(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and (y - x).abs().mean() > 0.05
    noise_only = training.Augment(training.LossConfig(**{**NO_AUGMENT, "noise_std": 0.1})).train()
    assert noise_only.affine is None
    torch.manual_seed(0)
    assert abs(float((noise_only(x) - x).std()) - 0.1) < 0.02
    off = training.Augment(training.LossConfig(**NO_AUGMENT)).train()
    assert off.affine is None and torch.equal(off(x), x)


def test_augment_fills_the_border_with_air():
    """Rotation moves the corners out of the volume: they are filled with -1 (air), not 0."""
    config = training.LossConfig(**{**NO_AUGMENT, "augment_degrees": 20.0})
    augment = training.Augment(config).train()
    x = -torch.ones(3, 1, 8, 12, 12)
    x[:, :, 2:6, 3:9, 3:9] = 1.0
    torch.manual_seed(0)
    y = augment(x)
    z, yy, xx = np.unravel_index(np.arange(8), (2, 2, 2))
    corners = y[:, 0, -z, -yy, -xx]  # index 0 or -1 on each axis: the 8 corners
    torch.testing.assert_close(corners, -torch.ones_like(corners), rtol=0, atol=1e-5)
    assert not torch.equal(y, x) and float(y.max()) > 0.5  # the body is still there, moved


# ------------------------------------------------------------------------------------------- trainer
def batch_of(split: RetrievalSplit) -> dict[str, torch.Tensor]:
    labels = torch.from_numpy(split.labels.astype(np.float32))
    return {"volume": torch.from_numpy(split.volumes), "labels": labels}


@pytest.mark.parametrize("mode", ["triplet", "micro_f1"])
def test_trainer_gives_a_finite_loss_with_gradients(mode):
    split = make_split(8, seed=3)
    config = training.LossConfig(mode=mode, margin=1.0)
    trainer = training.RetrievalTrainer(embedder(n_classes=3 if mode == "micro_f1" else 0), config).train()
    torch.manual_seed(0)
    loss, metrics = training.loss_fn(batch_of(split), trainer)
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss.detach()) > 0
    assert metrics and all(isinstance(v, float) for v in metrics.values())
    loss.backward()
    grads = [p.grad for p in trainer.embedder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    if mode == "micro_f1":
        value = float(loss.detach())
        assert 0 < value < 1 and metrics["micro_f1_soft"] == pytest.approx(1 - value)
    else:
        assert metrics["triplets"] > 0 and metrics["active"] > 0


@pytest.mark.parametrize("mode", ["triplet", "micro_f1"])
def test_trainer_in_eval_mode_is_the_loss_of_the_plain_embedding(mode):
    split = make_split(8, seed=4)
    config = training.LossConfig(mode=mode, margin=0.7, mining="semi_hard", pos_threshold=0.75)
    trainer = training.RetrievalTrainer(embedder(n_classes=3 if mode == "micro_f1" else 0), config).eval()
    batch = batch_of(split)
    loss, _ = trainer(batch)
    embedding, logits = trainer.embedder(volumes_to_input(batch["volume"]))
    if mode == "micro_f1":
        expected = f1_loss.micro_f1_loss(logits, batch["labels"])
    else:
        expected, _ = mining.triplet_loss(embedding, batch["labels"], margin=0.7, mining="semi_hard",
                                          pos_threshold=0.75)  # fmt: skip
    torch.testing.assert_close(loss, expected)


def test_micro_f1_mode_needs_a_head_and_modes_are_checked():
    with pytest.raises(ValueError, match="micro_f1 mode needs an embedder with a classification head"):
        training.RetrievalTrainer(embedder(n_classes=0), training.LossConfig(mode="micro_f1"))
    with pytest.raises(ValueError, match="mode must be 'triplet' or 'micro_f1', got 'arcface'"):
        training.LossConfig(mode="arcface")
    assert training.LossConfig(n_classes=5, n_samples=3).batch_size == 15


# ------------------------------------------------------------------------------------------- validation
def set_head(model: VolumeEmbedder, bias: float) -> None:
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(bias)


def test_validation_keeps_the_best_weights_and_writes_tensorboard(tmp_path):
    val, train_eval = make_split(8, seed=5), make_split(6, seed=6)
    model = embedder(n_classes=3)
    trainer = training.RetrievalTrainer(model, training.LossConfig(mode="micro_f1"))
    best = tmp_path / "checkpoints" / validation.BEST_WEIGHTS
    validator = validation.RetrievalValidation(val, train_eval, use_head=True, best_path=best, k=3,
                                               log_dir=tmp_path / "tensorboard")  # fmt: skip
    set_head(model, -10.0)  # predicts no label: micro-F1 0
    record = {"step": 10, "loss": 0.7, "lr": 1e-3}
    assert validator(record, trainer) is False
    assert record["val_micro_f1"] == 0.0 and set(record) >= {"val_mAP@3", "val_NDCG@3"}
    assert best.is_file() and json.loads(Path(f"{best}.json").read_text())["step"] == 10

    set_head(model, 10.0)  # predicts every label: micro-F1 2P / (P + N C)
    validator({"step": 20, "loss": 0.6}, trainer)
    positives = int(val.labels.sum())
    all_positive_f1 = 2 * positives / (positives + val.labels.size)
    assert validator.history[-1]["val_micro_f1"] == pytest.approx(all_positive_f1)
    assert validator.history[-1]["best"] and validator.history[-1]["val_mAP@3"] == record["val_mAP@3"]
    saved = {k: v.clone() for k, v in load_file(str(best)).items()}
    meta = json.loads(Path(f"{best}.json").read_text())
    assert meta["step"] == 20 and meta["val_micro_f1"] == validator.history[-1]["val_micro_f1"]
    assert meta["embedder"] == model.config.to_dict()

    set_head(model, -10.0)
    with torch.no_grad():
        model.project[1].weight.mul_(-1.0)  # other embeddings too
    validator({"step": 30, "loss": 0.5}, trainer)
    assert not validator.history[-1]["best"]
    assert json.loads(Path(f"{best}.json").read_text())["step"] == 20
    now = load_file(str(best))
    assert set(now) == set(saved) and all(torch.equal(now[k], saved[k]) for k in saved)
    validator.close()

    loaded, meta = validation.load_best(best)
    assert not loaded.training and meta["step"] == 20
    torch.testing.assert_close(loaded.head.bias, torch.full((3,), 10.0))
    with torch.no_grad():
        model.project[1].weight.mul_(-1.0)  # back to the weights of step 20
    set_head(model, 10.0)
    volumes = val.volumes[:3]
    np.testing.assert_array_equal(get_embeddings(loaded, volumes), get_embeddings(model, volumes))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    accumulator = EventAccumulator(str(tmp_path / "tensorboard"))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert {"train/loss", "train/lr", "validation/micro_f1", "validation/mAP@3", "validation/NDCG@3"} <= set(
        scalars)  # fmt: skip
    assert [e.step for e in accumulator.Scalars("validation/micro_f1")] == [10, 20, 30]
    assert "validation/micro_pr" in accumulator.Tags()["tensors"]


def test_validation_selects_by_micro_f1_then_map_every_nth_call(tmp_path, monkeypatch):
    val = make_split(4, seed=7)
    best = tmp_path / validation.BEST_WEIGHTS
    validator = validation.RetrievalValidation(val, val, use_head=False, best_path=best, every=2, k=2)
    model = embedder()
    outcomes = iter([(0.5, 0.2), (0.5, 0.1), (0.5, 0.3), (0.5, 0.3), (0.4, 0.9), (0.6, 0.0)])  # (F1, mAP)

    def fake_evaluate(_model):
        f1, ap = next(outcomes)
        return {"val_micro_f1": f1, "val_mAP@2": ap, "val_NDCG@2": 0.0}, np.zeros(val.labels.shape)

    monkeypatch.setattr(validator, "evaluate", fake_evaluate)
    for step in range(1, 13):
        record = {"step": step, "loss": 1.0}
        validator(record, model)
        assert ("val_micro_f1" in record) == (step % 2 == 0)
    assert [h["step"] for h in validator.history] == [2, 4, 6, 8, 10, 12]
    assert [h["best"] for h in validator.history] == [True, False, True, False, False, True]  # a tie is not
    assert json.loads(Path(f"{best}.json").read_text())["step"] == 12


def test_validation_knn_mode_scores_by_the_train_eval_vote(tmp_path):
    val, train_eval = make_split(7, seed=8), make_split(9, seed=9)
    model = embedder()
    validator = validation.RetrievalValidation(val, train_eval, use_head=False, best_path=tmp_path / "b", k=3,
                                               knn_k=4)  # fmt: skip
    metrics, scores = validator.evaluate(model)
    queries, reference = get_embeddings(model, val.volumes), get_embeddings(model, train_eval.volumes)
    expected = evaluation.knn_label_scores(queries, reference, train_eval.labels, 4)
    np.testing.assert_allclose(scores, expected)
    assert metrics["val_micro_f1"] == evaluation.classification_metrics(val.labels, expected)["micro"]
    through_index, _ = evaluation.evaluate_method(queries, val.labels, val.case_ids, None, ks=(3,))
    assert metrics["val_mAP@3"] == pytest.approx(through_index["mAP@3"], abs=1e-9)
    assert metrics["val_NDCG@3"] == pytest.approx(through_index["NDCG@3"], abs=1e-9)


def test_load_best_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"best\.safetensors: no best-model weights"):
        validation.load_best(tmp_path / "best.safetensors")
    path = tmp_path / "best.safetensors"
    validation.save_best(path, embedder(), {"step": 1})
    meta = json.loads(Path(f"{path}.json").read_text())
    meta["embedder"]["embedding_dim"] = 7
    Path(f"{path}.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"best\.safetensors: weights do not fit the embedder config"):
        validation.load_best(path)


# ------------------------------------------------------------------------------------------- evaluation
def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    return evaluation.random_embeddings(n, dim, seed)


def test_random_embeddings_are_seeded_unit_vectors():
    x = evaluation.random_embeddings(6, 4, seed=3)
    assert x.shape == (6, 4) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(x, evaluation.random_embeddings(6, 4, seed=3))
    assert not np.allclose(x, evaluation.random_embeddings(6, 4, seed=4))


def test_similarity_via_index_equals_brute_force_cosine():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 5)) * rng.uniform(0.5, 3, (12, 1))  # not unit: the index normalises
    ids = [f"q{i}" for i in range(12)]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    brute = unit @ unit.T
    sim = evaluation.similarity_via_index(x, ids, kind="flat")
    off = ~np.eye(12, dtype=bool)
    np.testing.assert_allclose(sim[off], brute[off], atol=1e-5)
    assert np.all(np.isposinf(np.diag(sim)))
    full = evaluation.similarity_via_index(x, ids, kind="flat", exclude_self=False)
    np.testing.assert_allclose(full, brute, atol=1e-5)
    np.testing.assert_array_equal(retrieval.ranking(sim, exclude_self=True)[:, :3],
                                  retrieval.ranking(np.where(off, brute, np.inf), exclude_self=True)[:, :3])


def test_knn_label_scores_by_hand():
    reference = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float64)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]], np.uint8)
    queries = np.array([[1, 0], [0, 1]], np.float64)
    # Query 0's neighbours: 0, 1, (2 and 3 farther); query 1's: 2, 1, 0.
    np.testing.assert_allclose(evaluation.knn_label_scores(queries, reference, labels, k=2),
                               [[1, 0.5, 0], [0.5, 0.5, 0.5]])  # fmt: skip
    nearest = evaluation.knn_label_scores(queries, reference, labels, k=1)
    np.testing.assert_allclose(nearest, [[1, 0, 0], [0, 0, 1]])
    self_scores = evaluation.knn_label_scores(reference, reference, labels, k=1, exclude_self=True)
    np.testing.assert_allclose(self_scores[0], labels[1])  # its own row is skipped: the nearest is row 1


def test_oracle_similarity_is_the_jaccard_relevance_and_ranks_perfectly():
    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], np.uint8)
    oracle = evaluation.oracle_similarity(labels)
    assert oracle.dtype == np.float64
    np.testing.assert_allclose(oracle[0], [1, 0.5, 0, 1, 1 / 3])
    np.testing.assert_allclose(oracle, retrieval.jaccard_relevance(labels))
    assert evaluation.retrieval_metrics(oracle, labels, ks=(2,))["NDCG@2"] == pytest.approx(1.0)


def test_evaluate_method_keys_and_similarity():
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [0, 0]], np.uint8)
    x, ids = unit_rows(6, 4, seed=2), [f"c{i}" for i in range(6)]
    metrics, sim = evaluation.evaluate_method(x, labels, ids, None, ks=(1, 3))
    expected = {f"{m}@{k}" for m in ("P", "R", "mAP", "NDCG") for k in (1, 3)} | {"queries_without_relevant"}
    assert set(metrics) == expected
    np.testing.assert_array_equal(sim, evaluation.similarity_via_index(x, ids))
    scores = np.where(labels > 0, 0.9, 0.1)
    scores[5] = 0.6  # the last case (no label) predicted with every label: 2 false positives
    with_f1, _ = evaluation.evaluate_method(x, labels, ids, scores, ks=(1, 3))
    assert set(with_f1) == expected | {"micro", "macro", "weighted"}
    assert with_f1["micro"] == pytest.approx(2 * 6 / (2 * 6 + 2))  # 6 true positives
    assert all(isinstance(v, float | int) for v in with_f1.values())
    within = evaluation.within_source_metrics(sim, labels, ["a"] * 5 + ["b"], min_cases=3, ks=(1,))
    assert set(within) == {"a"} and within["a"]["cases"] == 5
    assert within["a"]["P@1"] == evaluation.retrieval_metrics(sim[:5, :5], labels[:5], ks=(1,))["P@1"]


# ------------------------------------------------------------------------------------------- run kind
def test_newest_run_of_mode(monkeypatch, tmp_path):
    from ctlib import paths

    stem = Path(run_kind.TRAIN_NOTEBOOK).stem
    for name, mode, status, started in [("r1", "triplet", "completed", "2026-12-04T01"),
                                        ("r2", "triplet", "completed", "2026-12-04T03"),
                                        ("r3", "triplet", "failed", "2026-12-04T05"),
                                        ("r4", "micro_f1", "completed", "2026-12-04T04")]:  # fmt: skip
        folder = paths.runs_dir() / name
        folder.mkdir(parents=True)
        record = RunRecord(run_id=name, status=status, notebook_stem=stem, started_utc=started)
        record.to_file(folder / "run.json")
        (folder / "params.json").write_text(json.dumps({"parameters": {"mode": mode}}))
    assert run_kind.newest_run_of_mode("triplet") == "r2"
    assert run_kind.newest_run_of_mode("micro_f1") == "r4"
    assert run_kind.newest_run_of_mode("other") is None


def test_run_kind_refuses_unusable_best_weights(tmp_path):
    from ctlib import checkpoint

    model = embedder()
    trainer = training.RetrievalTrainer(model, training.LossConfig())
    path = run_kind.RetrievalRun.checkpoint_file(tmp_path)
    extra = {"loss": training.LossConfig().to_dict(), "label_names": ["a"], "window_hu": [-1000, 1000],
             "input_shape": list(SHAPE), "step": 3}  # fmt: skip
    config = {"model": model.config.to_dict()}
    checkpoint.save_checkpoint(path, model_state=trainer.state_dict(), config=config,
                               normalization=run_kind.NORMALIZATION, extra=extra,
                               rng_state=False)  # fmt: skip
    last = run_kind.RetrievalRun.load(tmp_path)
    assert last.weights == "last" and last.step == 3 and last.label_names == ("a",)
    assert last.input_shape == SHAPE and last.window_hu == (-1000.0, 1000.0) and not last.model.training
    volumes = make_split(2, seed=1).volumes
    np.testing.assert_array_equal(get_embeddings(last.model, volumes), get_embeddings(model, volumes))
    (path.parent / validation.BEST_WEIGHTS).write_bytes(b"not safetensors")
    sidecar = {"embedder": model.config.to_dict()}
    (path.parent / f"{validation.BEST_WEIGHTS}.json").write_text(json.dumps(sidecar))
    with pytest.raises(CTInputError, match=r"unusable retrieval checkpoint .*model\.safetensors: unreadable"):
        run_kind.RetrievalRun.load(tmp_path)
    assert run_kind.RetrievalRun.load(tmp_path, prefer_best=False).weights == "last"


def test_validation_writes_files_on_rank_zero_only(tmp_path, monkeypatch):
    """Under DDP every rank validates, but only rank 0 writes the best weights and the event files."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    split = make_split(6, seed=3)
    best, events = tmp_path / "best.safetensors", tmp_path / "tb"
    validator = validation.RetrievalValidation(split, split, use_head=False, knn_k=2, best_path=best,
                                               log_dir=events)
    model = embedder()
    record = {"step": 1, "loss": 1.0}
    validator(record, model)
    assert "val_micro_f1" in record and validator.history[0]["best"]
    assert not best.exists() and not events.exists()
