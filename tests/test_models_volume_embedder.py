"""The retrieval volume embedder: flattened feature size, forward shapes of both backbones, config checks,
``get_embeddings`` (unit norm, eval mode restored, logits) and the user's local 2D ResNet weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ctlib.models.slice_fusion import SliceFusionConfig, slice_network
from ctlib.models.volume_embedder import (
    VolumeEmbedder,
    VolumeEmbedderConfig,
    flattened_size,
    from_config,
    get_embeddings,
    unwrap,
    volumes_to_input,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RESNET = {"resnet_widths": (4, 4, 8, 8), "resnet_layers": (1, 1, 1, 1)}


def cnn(**changes) -> VolumeEmbedderConfig:
    base = {"backbone": "cnn3d", "input_shape": (8, 12, 16), "widths": (2, 4, 4), "embedding_dim": 6}
    return VolumeEmbedderConfig(**{**base, **changes})


def seeded(config: VolumeEmbedderConfig, seed: int = 0) -> VolumeEmbedder:
    torch.manual_seed(seed)
    return VolumeEmbedder(config)


def uint8_volumes(n: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(8, 8, 8), (8, 12, 16), (9, 13, 17), (11, 23, 10), (15, 15, 31)])
def test_flattened_size_equals_the_features_of_the_network(shape):
    config = cnn(input_shape=shape, widths=(2, 3, 5))
    model = seeded(config)
    features = model.features(torch.zeros(1, 1, *shape)).flatten(1)
    assert features.shape[1] == flattened_size(shape, config.widths) == model.project[1].in_features
    embedding, logits = model(torch.zeros(2, 1, *shape))
    assert embedding.shape == (2, 6) and logits is None


def test_flattened_size_by_hand():
    assert flattened_size((32, 64, 64), (16, 32, 64, 64)) == 64 * 2 * 4 * 4
    assert flattened_size((9, 13, 17), (2, 3, 5)) == 5 * 1 * 1 * 2
    assert flattened_size((7, 7, 7), (4,)) == 4 * 27


@pytest.mark.parametrize(
    ("config", "n_classes"),
    [(cnn(), 0), (cnn(), 3), (cnn(pooling="global"), 0), (cnn(pooling="global", input_shape=(9, 10, 11)), 4),
     (VolumeEmbedderConfig(backbone="slice_resnet", input_shape=(5, 16, 16), embedding_dim=6, **RESNET), 0),
     (VolumeEmbedderConfig(backbone="slice_resnet", input_shape=(4, 12, 20), embedding_dim=6, **RESNET), 3)],
    ids=["flatten", "flatten_head", "global", "global_head_odd", "slice_resnet", "slice_resnet_head"],
)  # fmt: skip
def test_forward_shapes(config, n_classes):
    config.n_classes = n_classes
    model = seeded(config).eval()
    x = torch.rand(2, 1, *config.input_shape) * 2 - 1
    embedding, logits = model(x)
    assert embedding.shape == (2, 6) and embedding.dtype == torch.float32 and torch.isfinite(embedding).all()
    if n_classes:
        assert model.head is not None and logits.shape == (2, n_classes)
        torch.testing.assert_close(logits, model.head(embedding))
    else:
        assert model.head is None and logits is None
    # Per-volume: the first volume's embedding does not depend on the second (no batch statistics).
    torch.testing.assert_close(model(x[:1])[0], embedding[:1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(embedding[0], embedding[1])


def test_global_pooling_accepts_any_size_but_flatten_sizes_from_the_config():
    flat, pooled = seeded(cnn()), seeded(cnn(pooling="global"))
    assert flat.project[1].in_features == 4 * 1 * 1 * 2 and pooled.project[1].in_features == 4
    features = torch.randn(2, 4, 3, 5, 2)
    torch.testing.assert_close(pooled.reduce(features), features.mean((2, 3, 4)))  # "global": the average
    with pytest.raises(ValueError, match=r"expected \(B, 1, \*\(8, 12, 16\)\) volumes, got \(1, 1, 8, 12"):
        flat(torch.zeros(1, 1, 8, 12, 17))
    with pytest.raises(ValueError, match=r"got \(1, 8, 12, 16\)"):
        pooled(torch.zeros(1, 8, 12, 16))


def test_config_validation():
    with pytest.raises(ValueError, match=r"too small for 3 pooling blocks \(each side needs >= 8\)"):
        cnn(input_shape=(7, 12, 16))
    cnn(input_shape=(8, 8, 8))  # the smallest that fits
    VolumeEmbedderConfig(backbone="slice_resnet", input_shape=(1, 8, 8), **RESNET)  # no pooling along z
    with pytest.raises(ValueError, match="backbone must be 'cnn3d' or 'slice_resnet', got 'vit'"):
        cnn(backbone="vit")
    with pytest.raises(ValueError, match="pooling must be 'flatten' or 'global', got 'max'"):
        cnn(pooling="max")
    with pytest.raises(ValueError, match=r"need a \(D, H, W\) input_shape"):
        cnn(input_shape=(8, 8))
    with pytest.raises(ValueError, match="embedding_dim >= 1"):
        cnn(embedding_dim=0)
    assert cnn(input_shape=[8, 12, 16]).input_shape == (8, 12, 16)
    config = cnn(n_classes=3)
    assert VolumeEmbedderConfig.from_dict(config.to_dict()) == config


def test_slice_resnet_reduces_the_features_of_each_axial_slice_along_z():
    config = VolumeEmbedderConfig(backbone="slice_resnet", input_shape=(5, 16, 12), embedding_dim=6, **RESNET)
    model = seeded(config).eval()
    x = torch.rand(2, 1, 5, 16, 12) * 2 - 1
    seen = []
    model.reduce.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(x)
        per_slice = torch.stack([model.slice_net(x[:, :, k]) for k in range(5)], dim=2)  # (B, F, D)
    assert seen[0].shape == per_slice.shape == (2, 8, 5)
    torch.testing.assert_close(seen[0], per_slice, rtol=1e-4, atol=1e-5)


def test_get_embeddings_unit_norm_float32_and_batch_independent():
    model = seeded(cnn(n_classes=3, dropout=0.5))
    volumes = uint8_volumes(5, (8, 12, 16))
    model.train()
    out = get_embeddings(model, volumes, batch_size=2)
    assert model.training and not any(not m.training for m in model.modules())  # train mode restored
    assert out.dtype == np.float32 and out.shape == (5, 6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(get_embeddings(model, volumes, batch_size=8), out, atol=1e-6)  # no dropout
    with torch.no_grad():
        raw = model.eval()(volumes_to_input(torch.from_numpy(volumes)))[0]
    np.testing.assert_allclose(out, torch.nn.functional.normalize(raw, dim=1).numpy(), atol=1e-6)
    assert not model.training
    get_embeddings(model, volumes)
    assert not model.training  # eval mode kept too
    np.testing.assert_allclose(get_embeddings(model, torch.from_numpy(volumes)), out, atol=1e-6)
    assert get_embeddings(model, volumes[:0]).shape == (0, 6)


def test_get_embeddings_return_logits_and_wrappers():
    model = seeded(cnn(n_classes=3))
    volumes = uint8_volumes(3, (8, 12, 16), seed=1)
    embeddings, logits = get_embeddings(model, volumes, return_logits=True)
    assert logits.shape == (3, 3) and logits.dtype == np.float32
    with torch.no_grad():
        expected = model.eval()(volumes_to_input(torch.from_numpy(volumes)))[1].numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    headless = seeded(cnn())
    assert get_embeddings(headless, volumes, return_logits=True)[1] is None
    wrapper = torch.nn.Module()
    wrapper.embedder = model  # as RetrievalTrainer holds it
    outer = torch.nn.Module()
    outer.module = wrapper  # as DistributedDataParallel holds it
    assert unwrap(outer) is model
    np.testing.assert_allclose(get_embeddings(outer, volumes), embeddings, atol=1e-6)


def test_volumes_to_input_maps_uint8_to_minus_one_one():
    x = volumes_to_input(torch.tensor([[[[0, 255], [128, 64]]]], dtype=torch.uint8))
    assert x.shape == (1, 1, 1, 2, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x.flatten(), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1, 64 / 127.5 - 1]))


def slice_resnet_weights(path, widths=(4, 4, 8, 8), seed=7):
    """A 2D ResNet state dict as a user would have it (same architecture, other weights)."""
    torch.manual_seed(seed)
    net, _ = slice_network(SliceFusionConfig(slice_net="resnet", slice_group=1, resnet_widths=widths,
                                             resnet_layers=(1, 1, 1, 1)))  # fmt: skip
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path))
    return state


def test_local_weights_path_loads_the_users_2d_resnet(tmp_path):
    state = slice_resnet_weights(tmp_path / "resnet2d.safetensors")
    path = str(tmp_path / "resnet2d.safetensors")
    config = VolumeEmbedderConfig(backbone="slice_resnet", input_shape=(3, 16, 16), embedding_dim=6,
                                  local_weights_path=path, **RESNET)  # fmt: skip
    model = seeded(config, seed=0)
    loaded = model.slice_net.state_dict()
    assert set(loaded) == set(state)
    for name, value in state.items():
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, msg=name)
    random_init = seeded(VolumeEmbedderConfig(**{**config.to_dict(), "local_weights_path": ""}), seed=0)
    random_state = random_init.slice_net.state_dict()
    assert any(not torch.equal(random_state[k], v) for k, v in state.items() if v.is_floating_point())


def test_local_weights_path_refuses_a_file_that_does_not_fit(tmp_path):
    slice_resnet_weights(tmp_path / "wide.safetensors", widths=(8, 8, 16, 16))

    def build(name: str) -> VolumeEmbedder:
        weights = str(tmp_path / name)
        config = VolumeEmbedderConfig("slice_resnet", (3, 16, 16), local_weights_path=weights, **RESNET)
        return VolumeEmbedder(config)

    with pytest.raises(ValueError, match=r"wide\.safetensors: weights do not fit the slice encoder"):
        build("wide.safetensors")
    save_file({"other.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"other\.safetensors: .*unexpected \['other\.weight'\]"):
        build("other.safetensors")
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors: no such weights file"):
        build("absent.safetensors")


def test_from_config_does_not_read_the_local_weights_file(tmp_path):
    """A trained run reloads after the user's 2D weights file is gone: the stored weights replace it."""
    config = VolumeEmbedderConfig(backbone="slice_resnet", input_shape=(4, 16, 16), embedding_dim=8, **RESNET)
    donor = VolumeEmbedder(config)
    path = tmp_path / "w2d.safetensors"
    save_file({k: v.contiguous() for k, v in donor.slice_net.state_dict().items()}, str(path))
    trained_config = VolumeEmbedderConfig.from_dict({**config.to_dict(), "local_weights_path": str(path)})
    VolumeEmbedder(trained_config)  # reads the file while it exists
    path.unlink()
    with pytest.raises(FileNotFoundError, match="w2d.safetensors"):
        VolumeEmbedder(trained_config)
    rebuilt = from_config(trained_config.to_dict())
    assert rebuilt.config.local_weights_path == str(path)
    rebuilt.load_state_dict(donor.state_dict())
