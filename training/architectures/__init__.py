"""The registry of architectures: name -> spec (config class, module class, input form, tasks, export facts).

The trainer fills in the sizes the data dictates (`resolve_hyper`); the exporter asks the spec's `export`
(an OnnxConfig, training/architectures/onnx_config.py) for the inputs, the exporter and the tolerance.
This module and training/tasks.py are the only places that tell architectures and tasks apart by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from training.architectures.autoencoder import Autoencoder, AutoencoderConfig
from training.architectures.cnn import CNN, CNNConfig
from training.architectures.gan import GANConfig, Generator
from training.architectures.mlp import MLP, MLPConfig
from training.architectures.onnx_config import GeneratorOnnxConfig, OnnxConfig, TransformerOnnxConfig
from training.architectures.recurrent import RecurrentConfig, RecurrentNet
from training.architectures.transformer import TransformerConfig, TransformerNet

SUPERVISED = ("multiclass", "binary", "regression")


@dataclass(frozen=True)
class ArchSpec:
    """What the trainer and the exporter need to know about one architecture."""

    config_cls: type
    module_cls: type
    tasks: tuple[str, ...]
    form: str | Callable[[dict], str]  # table, image or sequence (a function when the config decides)
    sizes: Callable[[list[int], int | None], dict]  # data sizes -> config fields
    fixed: tuple[tuple[str, Any], ...] = ()  # config fields the name decides (rnn/lstm/gru share a class)
    export: OnnxConfig = OnnxConfig()  # inputs, exporter, tolerance and client parameters of the served model
    default_task: str | None = None  # the task when the config names none (else the dataset's own)
    adversarial: bool = False  # trained by the adversarial step (training.gan), single process only


def _recurrent(cell: str, dynamo: bool) -> ArchSpec:
    # The Elman RNN keeps a dynamic sequence only with the TorchScript exporter; LSTM and GRU go through dynamo,
    # which needs their dispatch cache cleared first.
    return ArchSpec(RecurrentConfig, RecurrentNet, SUPERVISED + ("forecasting",), "sequence",
                    lambda shape, out: {"input_size": shape[-1], "out_features": out}, fixed=(("cell", cell),),
                    export=OnnxConfig(dynamo=dynamo, dynamic_sequence=True, clear_rnn_cache=dynamo))


ARCHITECTURES: dict[str, ArchSpec] = {
    "mlp": ArchSpec(MLPConfig, MLP, SUPERVISED, "table",
                    lambda shape, out: {"in_features": shape[0], "out_features": out}),
    "cnn": ArchSpec(CNNConfig, CNN, SUPERVISED, "image",
                    lambda shape, out: {"in_channels": shape[0], "image_size": shape[1], "out_features": out}),
    "rnn": _recurrent("rnn", dynamo=False),
    "lstm": _recurrent("lstm", dynamo=True),
    "gru": _recurrent("gru", dynamo=True),
    "transformer": ArchSpec(TransformerConfig, TransformerNet, SUPERVISED + ("forecasting",), "sequence",
                            lambda shape, out: {"input_size": shape[-1], "out_features": out},
                            export=TransformerOnnxConfig()),
    "autoencoder": ArchSpec(AutoencoderConfig, Autoencoder, ("anomaly",),
                            lambda model: "image" if model.get("kind") == "conv" else "table",
                            lambda shape, out: ({"in_channels": shape[0], "image_size": shape[1]} if len(shape) == 3
                                                else {"in_features": shape[0]}), default_task="anomaly"),
    "gan": ArchSpec(GANConfig, Generator, ("generation",), "image",
                    lambda shape, out: {"channels": shape[0], "image_size": shape[1], "num_classes": out},
                    export=GeneratorOnnxConfig(), default_task="generation", adversarial=True),
}


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; valid architectures are {sorted(ARCHITECTURES)}") from None


def input_form(arch: str, model: dict) -> str:
    """How the architecture takes its input: table [B, F], image [B, C, H, W] or sequence [B, T, F]."""
    form = get_arch(arch).form
    return form(model) if callable(form) else form


def resolve_hyper(arch: str, model: dict, sample_shape: list[int], out_features: int | None) -> dict:
    """The architecture's config fields: the user's values plus the sizes the data dictates."""
    spec = get_arch(arch)
    valid = {f.name for f in dataclasses.fields(spec.config_cls)}
    decided = {**spec.sizes(sample_shape, out_features), **dict(spec.fixed)}
    unknown = sorted(set(model) - valid)
    if unknown:
        raise ValueError(f"model: unknown key(s) {unknown} for architecture {arch!r}; valid keys are "
                         f"{sorted(valid - set(decided))}")
    clash = sorted(k for k in set(model) & set(decided) if model[k] != decided[k])
    if clash:
        raise ValueError(f"model: {clash} are set by the data or the architecture name for {arch!r}; "
                         f"remove them (they would be {[decided[k] for k in clash]})")
    from training.config import check_fields

    model = check_fields(spec.config_cls, model, "model", counts=True)
    hyper = {**model, **{k: v for k, v in decided.items() if k in valid}}
    return dataclasses.asdict(spec.config_cls(**hyper))


def build(arch: str, hyper: dict) -> nn.Module:
    """The architecture's module from its full hyperparameters (as resolve_hyper returns them)."""
    spec = get_arch(arch)
    return spec.module_cls(spec.config_cls(**hyper))
