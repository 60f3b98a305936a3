"""One contract for every run kind (as diffusers' ``SchedulerCommonTest`` is for every scheduler).

Each row trains a tiny run on CPU with the code the training notebook calls (its dataset, loss module
and ``ctlib.train.loop.train``), writing ``checkpoints/<kind>.pt`` into a run folder with a
``run.json``; reloads it by run id through the run kind's typed loader; predicts one tiny case with
the in-memory model (EMA applied where the notebook samples with it) and with the reloaded one; and
checks the round trip: the same prediction, the same config, normalization and recorded facts.
A new run kind adds a ``RunKindContract`` subclass to ``CONTRACTS``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from ctlib import checkpoint, paths
from ctlib.data import cache, phantom, windows
from ctlib.diffusion import schedules
from ctlib.diffusion.denoiser import Denoiser
from ctlib.diffusion.ema import EMA
from ctlib.errors import CTInputError
from ctlib.models import dose_unet, latent_unet, regressor, vae_run, volume_embedder
from ctlib.models import vae as vae_module
from ctlib.runs.record import RunRecord
from ctlib.studies.clip3d import run_kind as clip_run_kind
from ctlib.studies.dose import datasets as dose_datasets
from ctlib.studies.dose import diffusion as dose_diffusion
from ctlib.studies.dose import model_io, run_kind
from ctlib.studies.dose.patient_file import save_dose_patient
from ctlib.studies.interp import datasets, latent_diffusion, run_kinds
from ctlib.studies.retrieval import run_kind as retrieval_run_kind
from ctlib.train import loop
from tests.test_dose_datasets import ROIS, synthetic_patient

TRAIN = {"steps": 2, "batch_size": 2, "lr": 1e-2, "log_every": 1, "device": "cpu"}
TINY_VAE = vae_module.VAEConfig(channels=(4, 4), latent_channels=2, num_res_blocks=1, norm_num_groups=2)
TINY_UNET = latent_unet.LatentUNetConfig(channels=(8, 8), attention_levels=(False, False), num_res_blocks=1,
                                         num_head_channels=8, norm_num_groups=4, latent_channels=2,
                                         cond_channels=2)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: predictions of the in-memory and the reloaded model are then bit for bit equal."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def new_run(run_id: str, notebook_stem: str, parameters: dict[str, Any] | None = None) -> Path:
    """A completed run folder under ``$CTLIB_RUNS_DIR`` with its ``run.json`` (and ``params.json``)."""
    run_dir = paths.runs_dir() / run_id
    run_dir.mkdir(parents=True)
    RunRecord(run_id=run_id, status="completed", notebook_stem=notebook_stem).to_file(run_dir / "run.json")
    (run_dir / "params.json").write_text(json.dumps({"parameters": parameters or {}}))
    return run_dir


def cached_volumes(tmp: Path) -> list[tuple[str, Path]]:
    """Two small phantom volumes in the preprocessing cache format (what ``datasets.load_split`` lists)."""
    volumes = [phantom.ct_phantom(shape=(16, 32, 32), seed=i) for i in range(2)]
    return [(f"vol{i}", cache.save_volume(v, tmp / f"vol{i}.npz")) for i, v in enumerate(volumes)]


def train(module: torch.nn.Module, loss_fn, dataset, checkpoint_path: Path, **kwargs: Any) -> None:
    """``loop.train`` as the notebooks call it, with a two-step tiny config."""
    config = loop.TrainConfig(**TRAIN)
    data = loop.batch_stream(dataset, config)
    loop.train(module, loss_fn, data, config, checkpoint_path=checkpoint_path, **kwargs)
    data.close()


class RunKindContract:
    """Train -> reload -> predict round trip of one run kind; subclasses fill in the steps."""

    name: ClassVar[str]
    notebook_stem: ClassVar[str]
    run_type: ClassVar[Any]  # the typed loader: ``checkpoint_file(run_dir)`` and ``load(run_id)``
    parameters: ClassVar[dict[str, Any]] = {}  # the run's params.json
    trained: dict[str, Any]  # set by ``train_run``: in-memory model and the facts the loader must return

    def train_run(self, run_dir: Path, tmp: Path) -> None:
        """Train a tiny run into ``run_dir`` and keep the in-memory model in ``self.trained``."""
        raise NotImplementedError

    def load(self, run_id: str) -> Any:
        """The run kind's typed loader."""
        return self.run_type.load(run_id)

    def predict_trained(self) -> torch.Tensor:
        """One tiny case through the in-memory model (as the notebook uses it)."""
        raise NotImplementedError

    def predict_loaded(self, loaded: Any) -> torch.Tensor:
        """The same case through the reloaded model."""
        raise NotImplementedError

    def facts(self, loaded: Any) -> dict[str, Any]:
        """What the loader reports (compared with ``self.trained["facts"]``)."""
        raise NotImplementedError


# ------------------------------------------------------------------------------- slice interpolation
class VAEContract(RunKindContract):
    name, notebook_stem, run_type = "vae", "2026-11-23_02_vae", vae_run.VAERun

    def train_run(self, run_dir: Path, tmp: Path) -> None:
        window = windows.get_window("full")
        dataset = datasets.SliceDataset(cached_volumes(tmp), window=window, patch_size=8, seed=0)
        torch.manual_seed(0)
        module = vae_module.VAELossModule(vae_module.build_vae(TINY_VAE), kl_weight=1e-6)
        path = self.run_type.checkpoint_file(run_dir)
        train(module, loop.forward_loss, dataset, path, normalization=dataset.normalization,
              model_config=TINY_VAE.to_dict(), extra={"preprocess_run_id": "pre"})
        vae_run.record_scale_factor(path, 0.75, normalization=windows.normalization_record(window),
                                    preprocess_run_id="pre")
        self.trained = {"model": module.vae, "facts": {
            "config": TINY_VAE, "normalization": windows.normalization_record(window), "window": window,
            "scale_factor": 0.75, "preprocess_run_id": "pre", "step": 2}}

    def _predict(self, vae: torch.nn.Module) -> torch.Tensor:
        x = torch.from_numpy(windows.normalize(phantom.ct_phantom(shape=(2, 16, 16), seed=5).array, "full"))
        return vae_module.encode_slices(vae, x[None, None], 0.75)

    def predict_trained(self) -> torch.Tensor:
        return self._predict(self.trained["model"])

    def predict_loaded(self, loaded: vae_run.VAERun) -> torch.Tensor:
        return self._predict(loaded.vae)

    def facts(self, loaded: vae_run.VAERun) -> dict[str, Any]:
        return {"config": loaded.config, "normalization": loaded.normalization, "window": loaded.window,
                "scale_factor": loaded.scale_factor, "preprocess_run_id": loaded.preprocess_run_id,
                "step": loaded.step}


class DiffusionContract(RunKindContract):
    name, notebook_stem, run_type = "diffusion", "2026-11-23_03_diffusion", run_kinds.DiffusionRun

    def train_run(self, run_dir: Path, tmp: Path) -> None:
        vae_contract = VAEContract()
        vae_contract.train_run(new_run(f"{run_dir.name}_vae", VAEContract.notebook_stem), tmp)
        vae = vae_run.VAERun.load(f"{run_dir.name}_vae")
        dataset = datasets.PairPatchDataset(cached_volumes(tmp), factor=2, depth=4, patch_size=8,
                                            window=vae.window, mode="slab", seed=0)
        spec = latent_diffusion.InterpDiffusionSpec(num_train_timesteps=20, factor=2, mode="slab")
        torch.manual_seed(0)
        depth_multiple = latent_unet.required_depth_multiple(TINY_UNET)
        module = latent_diffusion.LatentDiffusionLoss(latent_unet.build_latent_unet(TINY_UNET), vae.vae,
                                                      scale_factor=vae.scale_factor, spec=spec,
                                                      depth_multiple=depth_multiple)
        ema = EMA(module, decay=0.5)
        extra = {"vae_run_id": f"{run_dir.name}_vae", "preprocess_run_id": vae.preprocess_run_id,
                 "scale_factor": vae.scale_factor}
        model_config = {"unet": TINY_UNET.to_dict(), "spec": spec.to_dict()}
        train(module, loop.forward_loss, dataset, self.run_type.checkpoint_file(run_dir),
              normalization=vae.normalization, model_config=model_config, extra=extra, ema=ema)
        self.trained = {"module": module, "ema": ema, "vae": vae, "facts": {
            "unet_config": TINY_UNET, "spec": spec, "normalization": vae.normalization, "weights": "ema",
            "depth_multiple": depth_multiple, **extra, "vae_config": TINY_VAE}}

    def load(self, run_id: str) -> tuple[run_kinds.DiffusionRun, vae_run.VAERun]:
        run = run_kinds.DiffusionRun.load(run_id)
        return run, run.load_vae()

    def _predict(
        self, unet: torch.nn.Module, vae: torch.nn.Module, scale_factor: float, multiple: int
    ) -> torch.Tensor:
        """One U-Net evaluation on the latents of a phantom (the condition) and seeded noise (x_t)."""
        x = torch.from_numpy(windows.normalize(phantom.ct_phantom(shape=(4, 16, 16), seed=5).array, "full"))
        cond = vae_module.encode_slices(vae, x[None, None], scale_factor)
        x_t = torch.randn(cond.shape, generator=torch.Generator().manual_seed(0))
        schedule = schedules.make_schedule("linear", num_train_timesteps=1000)
        denoiser = Denoiser(unet.eval(), "v", schedule, cond=cond, depth_multiple=multiple)
        with torch.no_grad():
            return denoiser(x_t, torch.tensor([7]))

    def predict_trained(self) -> torch.Tensor:
        module = self.trained["module"]
        with self.trained["ema"].applied_to(module):
            vae = self.trained["vae"].vae
            return self._predict(module.unet, vae, module.scale_factor, module.depth_multiple)

    def predict_loaded(self, loaded: tuple[run_kinds.DiffusionRun, vae_run.VAERun]) -> torch.Tensor:
        run, vae = loaded
        return self._predict(run.unet, vae.vae, run.scale_factor, run.depth_multiple)

    def facts(self, loaded: tuple[run_kinds.DiffusionRun, vae_run.VAERun]) -> dict[str, Any]:
        run, vae = loaded
        return {"unet_config": run.unet_config, "spec": run.spec, "normalization": run.normalization,
                "weights": run.weights, "depth_multiple": run.depth_multiple, "vae_run_id": run.vae_run_id,
                "preprocess_run_id": run.preprocess_run_id, "scale_factor": run.scale_factor,
                "vae_config": vae.config}


class RegressorContract(RunKindContract):
    name, notebook_stem, run_type = "regressor", "2026-11-23_05_regressor", run_kinds.RegressorRun
    config = regressor.RegressorConfig(features=(4, 4, 4, 4, 4, 4))

    def train_run(self, run_dir: Path, tmp: Path) -> None:
        window = windows.get_window("full")
        dataset = datasets.PairPatchDataset(cached_volumes(tmp), factor=2, depth=16, patch_size=32,
                                            window=window, mode="slab", seed=0)
        torch.manual_seed(0)
        model = regressor.build_regressor(self.config)
        ema = EMA(model, decay=0.5)
        extra = {"preprocess_run_id": "pre", "factor": 2, "mode": "slab"}
        train(model, regressor.regressor_loss, dataset, self.run_type.checkpoint_file(run_dir),
              normalization=windows.normalization_record(window), model_config=self.config.to_dict(),
              extra=extra, ema=ema)
        self.trained = {"model": model, "ema": ema, "facts": {
            "config": self.config, "normalization": windows.normalization_record(window), "window": window,
            "weights": "ema", "step": 2, **extra}}

    def _predict(self, model: torch.nn.Module) -> torch.Tensor:
        x = torch.linspace(-1, 1, 16 * 32 * 32).reshape(1, 1, 16, 32, 32)
        with torch.no_grad():
            return model.eval()(x)

    def predict_trained(self) -> torch.Tensor:
        with self.trained["ema"].applied_to(self.trained["model"]) as model:
            return self._predict(model)

    def predict_loaded(self, loaded: run_kinds.RegressorRun) -> torch.Tensor:
        return self._predict(loaded.model)

    def facts(self, loaded: run_kinds.RegressorRun) -> dict[str, Any]:
        return {"config": loaded.config, "normalization": loaded.normalization, "window": loaded.window,
                "weights": loaded.weights, "step": loaded.step, "preprocess_run_id": loaded.preprocess_run_id,
                "factor": loaded.factor, "mode": loaded.mode}


# ------------------------------------------------------------------------------------------- dose
class DoseContract(RunKindContract):
    """The dose training run; ``model_kind`` is the notebook's variant parameter."""

    notebook_stem, run_type = "2026-11-23_02_dose_train", run_kind.DoseRun
    model_kind: ClassVar[str]
    parameters = {"sw_roi": [4, 8, 8], "sample_steps": 2}
    constraints = torch.tensor([[70.0, 54.0, 1.0, 1.0]])

    def model_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def train_run(self, run_dir: Path, tmp: Path) -> None:
        patient_file = save_dose_patient(tmp / "pt_1.npz", synthetic_patient())
        dataset = dose_datasets.DosePatchDataset([patient_file], patch_size=(4, 8, 8), patches_per_patient=2,
                                                 seed=0)
        model_config = self.model_config()
        torch.manual_seed(0)
        module = model_io.build_module(model_config)
        ema = EMA(module, decay=0.5) if self.model_kind == "diffusion" else None
        extra = {"preprocess_run_id": "pre", "roi_names": [str(n) for n in ROIS], "patch_size": [4, 8, 8]}
        train(module, loop.forward_loss, dataset, self.run_type.checkpoint_file(run_dir),
              normalization=dataset.normalization, model_config=model_config, extra=extra, ema=ema)
        self.trained = {"module": module, "ema": ema, "facts": {
            "model_config": model_config, "normalization": dataset.normalization, "kind": self.model_kind,
            "has_ema": ema is not None, "preprocess_run_id": "pre", "patch_size": [4, 8, 8], "step": 2,
            "parameters": self.parameters}}

    def _predict(self, module: torch.nn.Module) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        predictor = model_io.dose_predictor(module, sample_steps=2, generator=generator)
        inputs = torch.linspace(-1, 1, 4 * 4 * 8 * 8).reshape(1, 4, 4, 8, 8)
        with torch.no_grad():
            return predictor(inputs, self.constraints)

    def predict_trained(self) -> torch.Tensor:
        module, ema = self.trained["module"], self.trained["ema"]
        with ema.applied_to(module) if ema is not None else contextlib.nullcontext():
            return self._predict(module.eval())

    def predict_loaded(self, loaded: run_kind.DoseRun) -> torch.Tensor:
        return self._predict(loaded.module)

    def facts(self, loaded: run_kind.DoseRun) -> dict[str, Any]:
        return {"model_config": loaded.model_config, "normalization": loaded.normalization,
                "kind": loaded.kind,
                "has_ema": loaded.has_ema, "preprocess_run_id": loaded.preprocess_run_id,
                "patch_size": loaded.patch_size, "step": loaded.step, "parameters": loaded.parameters}


class DoseUNetContract(DoseContract):
    name, model_kind = "dose_unet", "unet"

    def model_config(self) -> dict[str, Any]:
        net = dose_unet.DoseUNetConfig(in_channels=4, constraint_dim=4, channels=(4, 8), num_res_units=1,
                                       film_hidden=8)
        return model_io.unet_model_config(net, "mae", {}, ROIS)


class DoseDiffusionContract(DoseContract):
    name, model_kind = "dose_diffusion", "diffusion"

    def model_config(self) -> dict[str, Any]:
        spec = dose_diffusion.DoseDiffusionSpec(num_train_timesteps=20)
        net = latent_unet.LatentUNetConfig(channels=(8, 8), attention_levels=(False, False), num_res_blocks=1,
                                           num_head_channels=8, norm_num_groups=8, latent_channels=1,
                                           cond_channels=dose_diffusion.condition_channels(4, 4, spec))
        return model_io.diffusion_model_config(net, spec, (80.0, 80.0, 1.0, 1.0), ROIS)


# ------------------------------------------------------------------------------------------- CT-CLIP
class ClipContract(RunKindContract):
    """The CT-CLIP training run: model, tokenizer (inside the checkpoint) and training facts."""

    name, notebook_stem, run_type = "clip", "2026-12-03_02_clip_train", clip_run_kind.ClipRun
    reports = ["A nodule in the right lung.", "Pleural effusion on the left.", "No acute abnormality."]

    def train_run(self, run_dir: Path, tmp: Path) -> None:
        from ctlib.models import report_tokenizer
        from ctlib.models.ct_clip import CTClip, CTClipConfig
        from ctlib.models.slice_fusion import SliceFusionConfig
        from ctlib.models.text_encoder import TextEncoderConfig
        from ctlib.studies.clip3d import training as clip_training

        tokenizer = report_tokenizer.train_tokenizer(self.reports, 200)
        ids, mask = report_tokenizer.encode(tokenizer, self.reports * 2, 16)
        volumes = torch.linspace(-1, 1, 6 * 4 * 16 * 16).reshape(6, 1, 4, 16, 16)
        dataset = [{"volume": volumes[i], "ids": ids[i], "mask": mask[i]} for i in range(6)]
        config = CTClipConfig(
            vision=SliceFusionConfig(resnet_widths=(4, 4, 8, 8), feature_dim=8, fusion_heads=2,
                                     fusion_depth=1).to_dict(),
            text=TextEncoderConfig(vocab_size=tokenizer.get_vocab_size(), dim=8, depth=1, heads=2).to_dict(),
            embed_dim=8,
        )
        torch.manual_seed(0)
        model = CTClip(config)
        extra = {"preprocess_run_id": "pre", "tokenizer_json": tokenizer.to_str(),
                 "findings": ["Lung nodule"], "max_tokens": 16, "volume_shape": [4, 16, 16]}
        train(model, clip_training.loss_fn, dataset, self.run_type.checkpoint_file(run_dir),
              normalization=clip_run_kind.NORMALIZATION, model_config=config.to_dict(), extra=extra)
        self.trained = {"module": model, "ids": ids[:3], "mask": mask[:3], "volumes": volumes[:3], "facts": {
            "model_config": config.to_dict(), "findings": ("Lung nodule",), "max_tokens": 16,
            "volume_shape": (4, 16, 16), "preprocess_run_id": "pre", "step": 2, "weights": "model",
            "vocab": tokenizer.get_vocab()}}

    def _predict(self, model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(self.trained["volumes"], self.trained["ids"], self.trained["mask"])

    def predict_trained(self) -> torch.Tensor:
        return self._predict(self.trained["module"])

    def predict_loaded(self, loaded: clip_run_kind.ClipRun) -> torch.Tensor:
        return self._predict(loaded.model)

    def facts(self, loaded: clip_run_kind.ClipRun) -> dict[str, Any]:
        return {"model_config": loaded.model_config, "findings": loaded.findings,
                "max_tokens": loaded.max_tokens, "volume_shape": loaded.volume_shape,
                "preprocess_run_id": loaded.preprocess_run_id,
                "step": loaded.step, "weights": loaded.weights, "vocab": loaded.tokenizer.get_vocab()}


# ------------------------------------------------------------------------------------------- retrieval
class RetrievalContract(RunKindContract):
    """The retrieval training run (micro-F1 mode, validated at the last step): the loader prefers the
    validation-selected embedder (``best_model.safetensors``) over the last state."""

    name, notebook_stem = "retrieval", "2026-12-04_02_retrieval_train"
    run_type = retrieval_run_kind.RetrievalRun
    parameters = {"mode": "micro_f1"}

    def train_run(self, run_dir: Path, tmp: Path) -> None:
        from ctlib.studies.retrieval import dataset, training, validation

        generator = torch.Generator().manual_seed(0)
        volumes = torch.randint(0, 256, (6, 8, 8, 8), generator=generator, dtype=torch.uint8).numpy()
        labels = torch.tensor([[1, 0], [0, 1], [1, 1], [1, 0], [0, 1], [0, 0]], dtype=torch.uint8).numpy()
        ids = [f"case{i}" for i in range(6)]
        split_file = dataset.write_split(tmp / "train.npz", volumes, labels, ["nodule", "effusion"], ids, ids,
                                         ["phantom"] * 6, (-1000.0, 1000.0))
        split = dataset.RetrievalSplit.load(split_file)
        config = volume_embedder.VolumeEmbedderConfig(input_shape=(8, 8, 8), widths=(2, 4), embedding_dim=4,
                                                      n_classes=2)
        loss = training.LossConfig(mode="micro_f1")
        torch.manual_seed(0)
        trainer = training.RetrievalTrainer(volume_embedder.VolumeEmbedder(config), loss)
        path = self.run_type.checkpoint_file(run_dir)
        validator = validation.RetrievalValidation(split, split, use_head=True, every=2, k=2,
                                                   best_path=path.parent / validation.BEST_WEIGHTS)
        extra = {"preprocess_run_id": "pre", "loss": loss.to_dict(), "label_names": split.label_names,
                 "window_hu": list(split.window_hu), "input_shape": list(split.input_shape)}
        train(trainer, training.loss_fn, training.RetrievalDataset(split), path,
              normalization=retrieval_run_kind.NORMALIZATION, model_config=config.to_dict(), extra=extra,
              callback=validator)
        validator.close()
        self.trained = {"module": trainer, "volumes": split.volumes[:3], "facts": {
            "embedder_config": config.to_dict(), "loss": loss.to_dict(),
            "label_names": ("nodule", "effusion"), "window_hu": (-1000.0, 1000.0), "input_shape": (8, 8, 8),
            "preprocess_run_id": "pre", "step": 2, "weights": "best"}}

    def _predict(self, model: torch.nn.Module) -> torch.Tensor:
        return torch.from_numpy(volume_embedder.get_embeddings(model, self.trained["volumes"]))

    def predict_trained(self) -> torch.Tensor:
        return self._predict(self.trained["module"])

    def predict_loaded(self, loaded: retrieval_run_kind.RetrievalRun) -> torch.Tensor:
        return self._predict(loaded.model)

    def facts(self, loaded: retrieval_run_kind.RetrievalRun) -> dict[str, Any]:
        return {"embedder_config": loaded.embedder_config, "loss": loaded.loss,
                "label_names": loaded.label_names, "window_hu": loaded.window_hu,
                "input_shape": loaded.input_shape, "preprocess_run_id": loaded.preprocess_run_id,
                "step": loaded.step, "weights": loaded.weights}


CONTRACTS: list[type[RunKindContract]] = [
    VAEContract, DiffusionContract, RegressorContract, DoseUNetContract, DoseDiffusionContract, ClipContract,
    RetrievalContract,
]


@pytest.mark.parametrize("contract_type", CONTRACTS, ids=lambda c: c.name)
def test_train_reload_predict_round_trip(contract_type: type[RunKindContract], tmp_path: Path):
    contract = contract_type()
    run_id = f"20261123-000000_{contract.name}_contract"
    contract.train_run(new_run(run_id, contract.notebook_stem, contract.parameters), tmp_path)
    expected = contract.predict_trained()
    loaded = contract.load(run_id)
    assert contract.facts(loaded) == contract.trained["facts"]
    got = contract.predict_loaded(loaded)
    assert got.shape == expected.shape and torch.isfinite(got).all() and float(got.abs().max()) > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("contract_type", CONTRACTS, ids=lambda c: c.name)
def test_loader_refuses_a_missing_run_and_a_checkpoint_of_another_kind(contract_type: type[RunKindContract]):
    contract = contract_type()
    with pytest.raises(CTInputError, match="no_such_run"):
        contract.load("no_such_run")
    stray = new_run("20261123-000000_stray", "other")  # the right file name, nothing usable in it
    checkpoint.save_checkpoint(contract.run_type.checkpoint_file(stray), model_state={"w": torch.zeros(1)},
                               config={}, normalization={}, rng_state=False)
    with pytest.raises(CTInputError, match="lacks"):
        contract.load(stray.name)
