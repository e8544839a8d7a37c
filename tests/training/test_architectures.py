"""Architecture modules: output shapes, gradient flow, rejected choices, and ONNX export parity per module."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from training.architectures import get_arch
from training.architectures.autoencoder import Autoencoder, AutoencoderConfig
from training.architectures.cnn import CNN, CNNConfig
from training.architectures.gan import Discriminator, GANConfig, Generator
from training.architectures.recurrent import RecurrentConfig, RecurrentNet
from training.architectures.onnx_config import OnnxConfig
from training.architectures.transformer import TransformerConfig, TransformerNet
from training.export import ExportPlan, export_graph

CELLS = ["rnn", "lstm", "gru"]
ATOL = 1e-5  # torch vs ONNX Runtime, every architecture


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_grads_flow(model: nn.Module, *inputs) -> None:
    """One backward pass reaches every parameter."""
    model.train()
    out = model(*inputs)
    loss = sum(o.float().square().mean() for o in (out if isinstance(out, tuple) else (out,)))
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


def padded_batch(batch: int, steps: int, features: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T, F] with zeros after each sample's length, and the lengths as int64 [B]."""
    x = torch.randn(batch, steps, features)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    return x, torch.tensor(lengths, dtype=torch.int64)


# --- CNN -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, channels, kernels", [(8, [4, 8], [3, 3]), (16, [4, 8, 8], [3, 2, 5]),
                                                     (28, [4, 8], [5, 4])])
def test_cnn_shapes(size, channels, kernels):
    model = CNN(CNNConfig(image_size=size, channels=channels, kernel_sizes=kernels, out_features=3, hidden_dim=8))
    assert model(torch.randn(2, 1, size, size)).shape == (2, 3)
    model = CNN(CNNConfig(in_channels=3, image_size=size, channels=channels, kernel_sizes=kernels, pool=False,
                          batch_norm=False, dropout=0.5, hidden_dim=8))
    assert model(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_cnn_gradients_and_choices():
    assert_grads_flow(CNN(CNNConfig(channels=[4, 8], hidden_dim=8, dropout=0.1)), torch.randn(3, 1, 8, 8))
    with pytest.raises(ValueError, match="valid activations are .*'relu'"):
        CNN(CNNConfig(activation="swish"))
    with pytest.raises(ValueError, match="differ in length"):
        CNN(CNNConfig(channels=[4, 8], kernel_sizes=[3]))


# --- Recurrent -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, False), (1, True), (2, True)])
def test_recurrent_shapes(cell, num_layers, bidirectional):
    config = RecurrentConfig(cell=cell, input_size=3, out_features=2, hidden_dim=5, num_layers=num_layers,
                             bidirectional=bidirectional, dropout=0.1)
    model = RecurrentNet(config).eval()
    x, lengths = padded_batch(4, 7, 3, [7, 1, 3, 5])
    assert model(x).shape == (4, 2)
    assert model(x, lengths).shape == (4, 2)
    with torch.no_grad():
        full = model(x, torch.full((4,), 7, dtype=torch.int64))
        torch.testing.assert_close(full, model(x))  # every sample full length: same as no lengths


@pytest.mark.parametrize("cell", CELLS)
def test_recurrent_lengths_ignore_the_padded_tail(cell):
    """Unidirectional: the output at lengths - 1 equals running the unpadded sequence alone."""
    model = RecurrentNet(RecurrentConfig(cell=cell, input_size=3, hidden_dim=5, num_layers=2)).eval()
    x, lengths = padded_batch(3, 9, 3, [9, 4, 2])
    with torch.no_grad():
        batched = model(x, lengths)
        alone = torch.cat([model(x[i: i + 1, :n]) for i, n in enumerate(lengths.tolist())])
        torch.testing.assert_close(batched, alone)
        x[1, 4:] = 5.0  # a different padded tail
        torch.testing.assert_close(model(x, lengths), batched)


@pytest.mark.parametrize("cell", CELLS)
def test_recurrent_gradients(cell):
    model = RecurrentNet(RecurrentConfig(cell=cell, input_size=3, hidden_dim=5, num_layers=2, bidirectional=True,
                                         dropout=0.1))
    x, lengths = padded_batch(4, 6, 3, [6, 2, 3, 1])
    assert_grads_flow(model, x, lengths)


def test_recurrent_choices():
    with pytest.raises(ValueError, match=r"valid cells are \['gru', 'lstm', 'rnn'\]"):
        RecurrentNet(RecurrentConfig(cell="transformer"))
    with pytest.raises(ValueError, match=r"valid activations are \['relu', 'tanh'\]"):
        RecurrentNet(RecurrentConfig(cell="rnn", activation="gelu"))
    with pytest.raises(ValueError, match=r"valid activations are \['tanh'\]"):
        RecurrentNet(RecurrentConfig(cell="lstm", activation="relu"))
    with pytest.raises(ValueError, match="valid activations are"):
        RecurrentNet(RecurrentConfig(cell="rnn", activation="swish"))
    RecurrentNet(RecurrentConfig(cell="rnn", activation="relu"))


# --- Transformer ---------------------------------------------------------------------------------------


def tiny_transformer(**kw) -> TransformerNet:
    config = dict(input_size=3, out_features=2, d_model=8, nhead=2, num_layers=2, dim_feedforward=16, max_len=32)
    return TransformerNet(TransformerConfig(**{**config, **kw}))


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_shapes_and_mask(pooling, activation):
    model = tiny_transformer(pooling=pooling, activation=activation).eval()
    x = torch.randn(3, 10, 3)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[1, 6:] = True
    mask[2, 2:] = True
    assert model(x).shape == (3, 2)
    with torch.no_grad():
        masked = model(x, mask)
        assert masked.shape == (3, 2)
        other = x.clone()
        other[mask] = 7.0  # a different masked-out tail changes nothing
        torch.testing.assert_close(model(other, mask), masked)
        torch.testing.assert_close(model(x[1:2, :6]), masked[1:2])  # same as the unpadded sequence
        torch.testing.assert_close(model(x, torch.zeros_like(mask)), model(x))  # an all-valid mask


def test_transformer_gradients_and_choices():
    x = torch.randn(3, 5, 3)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 3:] = True
    assert_grads_flow(tiny_transformer(), x, mask)
    with pytest.raises(ValueError, match=r"valid activations are \['gelu', 'relu'\]"):
        tiny_transformer(activation="tanh")
    with pytest.raises(ValueError, match=r"valid poolings are \['last', 'mean'\]"):
        tiny_transformer(pooling="cls")


# --- Autoencoder ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("config, shape", [
    (AutoencoderConfig(in_features=64, hidden_dims=[16, 8], latent_dim=4), (2, 64)),
    (AutoencoderConfig(in_features=10, hidden_dims=[], latent_dim=3, batch_norm=True, dropout=0.1), (2, 10)),
    (AutoencoderConfig(kind="conv", image_size=8, channels=[4, 8], latent_dim=4), (2, 1, 8, 8)),
    (AutoencoderConfig(kind="conv", image_size=16, in_channels=3, channels=[4, 8, 8], latent_dim=5,
                       batch_norm=True, dropout=0.1), (2, 3, 16, 16)),
    (AutoencoderConfig(kind="conv", image_size=28, channels=[4, 8, 8], latent_dim=4), (2, 1, 28, 28)),
])
def test_autoencoder_shapes_and_gradients(config, shape):
    model = Autoencoder(config)
    x = torch.randn(*shape)
    recon, z = model(x)
    assert recon.shape == x.shape and z.shape == (shape[0], config.latent_dim)
    assert model.encode(x).shape == z.shape and model.decode(z).shape == x.shape
    assert_grads_flow(model, x)


def test_autoencoder_choices():
    with pytest.raises(ValueError, match=r"valid kinds are \['conv', 'dense'\]"):
        Autoencoder(AutoencoderConfig(kind="vae"))
    with pytest.raises(ValueError, match="valid activations are"):
        Autoencoder(AutoencoderConfig(activation="swish", hidden_dims=[]))


# --- GAN -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [8, 16])
def test_gan_shapes_range_and_gradients(size):
    config = GANConfig(latent_dim=6, num_classes=3, image_size=size, base_channels=4, embed_dim=3, dropout=0.1)
    generator, discriminator = Generator(config), Discriminator(config)
    z, labels = torch.randn(5, 6) * 10, torch.tensor([0, 1, 2, 1, 0])
    images = generator(z, labels)
    assert images.shape == (5, 1, size, size)
    assert images.min() >= -1 and images.max() <= 1
    assert discriminator(images, labels).shape == (5,)
    assert_grads_flow(generator, z, labels)
    assert_grads_flow(discriminator, images.detach(), labels)


def test_gan_discriminator_uses_label_and_leaky_slope():
    config = GANConfig(latent_dim=4, num_classes=3, base_channels=4, embed_dim=3)
    discriminator = Discriminator(config).eval()
    slopes = [m.negative_slope for m in discriminator.modules() if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.2, 0.2]
    images = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(discriminator(images, torch.tensor([0, 0])), discriminator(images, torch.tensor([1, 2])))


def test_gan_choices():
    with pytest.raises(ValueError, match="valid activations are"):
        Discriminator(GANConfig(activation="swish"))
    with pytest.raises(ValueError, match="multiple of 4"):
        Generator(GANConfig(image_size=10))


# --- ONNX export ---------------------------------------------------------------------------------------


def export_and_check(model: nn.Module, example: tuple, names: list[str], dynamic: list[dict[int, str]],
                     checks: list[tuple], export: OnnxConfig = OnnxConfig(), atol: float = ATOL) -> None:
    """Export in eval mode with the production exporter (training.export.export_graph: opset 20, weights inside,
    the architecture's exporter and RNN-cache facts in `export`), assert the dynamic dims stayed symbolic, and
    compare ONNX Runtime with torch on each input tuple in `checks` (each differs from `example`)."""
    model.eval()
    with torch.no_grad():
        out = model(*example)
    inputs = [{"name": name, "datatype": "FP32", "shape": [-1 if axis in spec else size
                                                           for axis, size in enumerate(t.shape)]}
              for name, spec, t in zip(names, dynamic, example)]
    outputs = [{"name": f"output_{i}", "datatype": "FP32", "shape": [-1]}
               for i in range(len(out) if isinstance(out, tuple) else 1)]
    plan = ExportPlan(model, inputs, outputs, tuple(t.numpy() for t in example), [], export.dynamo, export.atol,
                      clear_rnn_cache=export.clear_rnn_cache)
    serialized = export_graph(plan).SerializeToString()
    session = ort.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    graph_inputs = {i.name: i for i in session.get_inputs()}
    for name, spec in zip(names, dynamic):
        shape = graph_inputs[name].shape
        frozen = [axis for axis in spec if not isinstance(shape[axis], str)]
        assert not frozen, f"input {name!r} dims {frozen} became constants: {shape}"
    problems = []
    for inputs in checks:
        with torch.no_grad():
            expected = model(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(None, {name: t.numpy() for name, t in zip(names, inputs)})
        shapes = [tuple(t.shape) for t in inputs]
        if len(got) != len(expected):
            problems.append(f"{shapes}: {len(got)} outputs, expected {len(expected)}")
            continue
        for want, have in zip(expected, got):
            if want.shape != have.shape:
                problems.append(f"{shapes}: shape {have.shape}, expected {tuple(want.shape)}")
            elif not np.allclose(have, want.numpy(), atol=atol, rtol=0):
                problems.append(f"{shapes}: max abs diff {np.abs(have - want.numpy()).max():.2e}")
    assert not problems, problems


def test_export_cnn():
    model = CNN(CNNConfig(channels=[4, 8], kernel_sizes=[3, 2], hidden_dim=8, dropout=0.1))
    export_and_check(model, (torch.randn(2, 1, 8, 8),), ["input"], [{0: "batch"}],
                     [(torch.randn(1, 1, 8, 8),), (torch.randn(5, 1, 8, 8),)])


@pytest.mark.parametrize("cell, bidirectional", [("rnn", False), ("lstm", True), ("gru", False)])
def test_export_recurrent(cell, bidirectional):
    """Batch and sequence dynamic, lengths as a second input; the Elman RNN needs the legacy exporter."""
    model = RecurrentNet(RecurrentConfig(cell=cell, input_size=3, out_features=2, hidden_dim=5, num_layers=2,
                                         bidirectional=bidirectional, dropout=0.1))
    example = padded_batch(2, 4, 3, [4, 2])
    checks = [padded_batch(1, 3, 3, [2]), padded_batch(5, 11, 3, [11, 1, 5, 7, 3])]
    export_and_check(model, example, ["input", "lengths"], [{0: "batch", 1: "steps"}, {0: "batch"}], checks,
                     export=get_arch(cell).export)


def test_export_transformer_with_mask():
    model = tiny_transformer()
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[1, 3:] = True

    def masked(batch: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.zeros(batch, steps, dtype=torch.bool)
        m[0, steps // 2:] = True
        return torch.randn(batch, steps, 3), m

    export_and_check(model, (torch.randn(2, 4, 3), mask), ["input", "padding_mask"],
                     [{0: "batch", 1: "steps"}, {0: "batch", 1: "steps"}], [masked(1, 3), masked(5, 11)])


def test_export_autoencoder():
    model = Autoencoder(AutoencoderConfig(kind="conv", image_size=8, channels=[4, 8], latent_dim=4,
                                          batch_norm=True))
    export_and_check(model, (torch.randn(2, 1, 8, 8),), ["input"], [{0: "batch"}],
                     [(torch.randn(1, 1, 8, 8),), (torch.randn(5, 1, 8, 8),)])


def test_export_gan():
    config = GANConfig(latent_dim=6, num_classes=3, base_channels=4, embed_dim=3)
    generator, discriminator = Generator(config), Discriminator(config)

    def generator_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch, 6), torch.randint(0, 3, (batch,))

    def discriminator_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(batch, 1, 8, 8) * 2 - 1, torch.randint(0, 3, (batch,))

    dynamic = [{0: "batch"}, {0: "batch"}]
    export_and_check(generator, generator_inputs(2), ["z", "labels"], dynamic,
                     [generator_inputs(1), generator_inputs(5)])
    export_and_check(discriminator, discriminator_inputs(2), ["images", "labels"], dynamic,
                     [discriminator_inputs(1), discriminator_inputs(5)])
