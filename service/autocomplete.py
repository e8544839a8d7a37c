"""Auto-complete a config.pbtxt from the ONNX graph and validate it against the graph, as Triton does.

The rules are those of Triton's ONNX Runtime backend (triton-inference-server/onnxruntime_backend
`src/onnxruntime.cc`, core `src/model_config_utils.cc`), with their wording:

- config.pbtxt is optional, and may be partial. Inputs and outputs it leaves out come from the graph; when it
  lists both, they are validated against the graph instead.
- The model can batch when every graph input and output has a dynamic first dimension. A batching model with
  no (or a zero) max_batch_size gets `default_max_batch_size` (Triton's 4), and then `dynamic_batching {}`.
  A non-zero max_batch_size on a model that cannot batch is refused.
- With max_batch_size > 0, `dims` leave out the batch dimension. A per-sample scalar is `dims: [1]` with
  `reshape { shape: [] }`.
- A stateful model (`sequence_batching`) gets no dynamic batching; its control and state inputs, and its state
  outputs, are fed and kept by the server (service/sequence_config.py), so they are not the model's inputs and
  outputs in the configuration.
"""

from __future__ import annotations

import math
from pathlib import Path

from service.configfile import (default_filename, dynamic_batching, one, parameters, read_tensor, version_policy,
                                warmup_samples)
from service.errors import ConfigError
from service.modelconfig import (BACKEND, DEFAULT_MAX_BATCH_SIZE, IGNORED_FIELDS, KNOWN_FIELDS, PLATFORM,
                                 SERVED_TYPES, UNSUPPORTED_FIELDS, GraphTensor, ModelConfig, TensorConfig)
from service.sequence_config import read_sequence_batching


def _can_batch(tensors: list[GraphTensor]) -> bool:
    return all(t.shape and t.shape[0] == -1 for t in tensors)


def _from_graph(tensor: GraphTensor, max_batch_size: int, kind: str) -> TensorConfig:
    if tensor.data_type not in SERVED_TYPES:
        raise ConfigError(f"unable to autofill for '{tensor.name}': the {kind}'s ONNX type {tensor.ort_type} "
                          f"is not one nnserve serves")
    shape = tensor.shape if tensor.shape is not None else [-1]
    dims = shape[1:] if max_batch_size > 0 else shape
    if not dims:  # Triton has no empty dims: a scalar is [1], reshaped to [] for the model when batching
        return TensorConfig(tensor.name, tensor.data_type, [1], [] if max_batch_size > 0 else None,
                            scalar=max_batch_size == 0)
    return TensorConfig(tensor.name, tensor.data_type, list(dims))


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _compare_dims(model: str, tensor: TensorConfig, shape: list[int], max_batch_size: int, exact: bool) -> None:
    """Triton's CompareDimsSupported: the configuration's shape of a tensor against the graph's."""
    dims = tensor.reshape if tensor.reshape is not None else tensor.dims
    where = f"model '{model}', tensor '{tensor.name}'"
    if max_batch_size > 0:
        if not shape or shape[0] != -1:
            raise ConfigError(f"{where}: for the model to support batching the shape should have at least 1 "
                              f"dimension and the first dimension must be -1; but shape expected by the model is "
                              f"{_shape_text(shape)}")
        full = [-1] + dims
        detail = ("an initial batch dimension because max_batch_size > 0 followed by the explicit tensor shape, "
                  f"making complete shape {_shape_text(full)}")
    else:
        full, detail = dims, f"shape {_shape_text(dims)}"
    if len(full) != len(shape) or not all(m == c if exact or m != -1 else True for m, c in zip(shape, full)):
        raise ConfigError(f"{where}: the model expects {len(shape)} dimensions (shape {_shape_text(shape)}) but the "
                          f"model configuration specifies {len(full)} dimensions ({detail})")


def _validate(kind: str, given: list[TensorConfig], graph: list[GraphTensor], max_batch_size: int,
              model: str, overridable: list[GraphTensor] = ()) -> None:
    """Triton's ValidateInputs / ValidateOutputs, with its wording. `overridable`: the graph's initializers that
    an input may override (ONNX Runtime's overridable initializers), which config.pbtxt lists as optional."""
    by_name = {t.name: t for t in [*overridable, *graph]}
    names = [t.name for t in given]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"model '{model}': {kind} {twice} listed more than once in the configuration")
    if kind == "input":
        expected = len([t for t in given if not t.optional])
        if expected != len(graph):
            raise ConfigError(f"unable to load model '{model}', configuration expects {expected} inputs, model "
                              f"provides {len(graph)}")
    for tensor in given:
        node = by_name.get(tensor.name)
        if node is not None and not tensor.optional and node in overridable:
            raise ConfigError(f"unable to load model '{model}', input '{tensor.name}' is an initializer the model "
                              "may take as an input: declare it optional")
        if tensor.optional and max_batch_size != 0:
            raise ConfigError(f"unable to load model '{model}', optional input '{tensor.name}' is not supported "
                              "for models that support batching")
        if node is None:
            raise ConfigError(f"unexpected inference {kind} '{tensor.name}', allowed {kind}s are: "
                              + ", ".join(sorted(by_name)))
        model_type = node.data_type if node.data_type != "TYPE_STRING" else "TYPE_BYTES"
        if not tensor.data_type:
            raise ConfigError(f"model {kind} '{tensor.name}' must specify 'data_type' for {model}")
        if tensor.data_type != node.data_type:
            raise ConfigError(f"unable to load model '{model}', configuration expects datatype {tensor.data_type} "
                              f"for {kind} '{tensor.name}', model provides {model_type}")
        if tensor.data_type not in SERVED_TYPES:
            raise ConfigError(f"unsupported datatype {tensor.data_type} for {kind} '{tensor.name}' for model "
                              f"'{model}'")
        if not tensor.dims:
            raise ConfigError(f"model {kind} '{tensor.name}' must specify 'dims' for {model}")
        if any(d == 0 or d < -1 for d in tensor.dims + (tensor.reshape or [])):
            raise ConfigError(f"model {kind} '{tensor.name}' dimension must be integer >= 1, or -1 to indicate a "
                              f"variable-size dimension for {model}")
        if tensor.reshape is not None:
            if not tensor.reshape and max_batch_size == 0:
                raise ConfigError(f"model {kind} '{tensor.name}' cannot have empty reshape for non-batching model "
                                  f"as scalar tensors are not supported for {model}")
            variable = (tensor.dims.count(-1), tensor.reshape.count(-1))
            if variable[0] != variable[1] or variable[0] > 1:
                raise ConfigError(f"model {kind} '{tensor.name}': dims {tensor.dims} and reshape {tensor.reshape} must "
                                  f"have the same variable-size (-1) dimension, at most one, for {model}")
            if math.prod(tensor.dims) != math.prod(tensor.reshape):
                raise ConfigError(f"model {kind} '{tensor.name}' has different size for dims and reshape for {model}")
        if node.shape is None:
            continue
        if node.shape == [] and tensor.reshape is None:  # a scalar the model takes or gives as such
            if any(d != 1 for d in tensor.dims):
                raise ConfigError(f"unable to load model '{model}', scalar tensor '{tensor.name}', should only "
                                  "provide 1 in the model configuration when the model doesn't support batching. "
                                  f"Model configuration provided: {_shape_text(tensor.dims)}.")
            tensor.scalar = True
            continue
        _compare_dims(model, tensor, node.shape, max_batch_size, exact=kind == "output")


def _sequence(fields: dict, folder: str, model_dir: Path | None, graph_inputs: list[GraphTensor],
              graph_outputs: list[GraphTensor], listed_outputs: set[str]):
    """(the sequence_batching block, the graph inputs and outputs the client sees): the control and state inputs
    the server feeds, and the state outputs it keeps (unless config.pbtxt lists them as outputs), left out."""
    if "sequence_batching" not in fields:
        return None, graph_inputs, graph_outputs
    if "dynamic_batching" in fields:
        raise ConfigError(f"model '{folder}': dynamic_batching and sequence_batching cannot both be given")
    sequence = read_sequence_batching(one(fields, "sequence_batching", dict, ""), model_dir or Path(folder))
    inputs, outputs = {t.name: t for t in graph_inputs}, {t.name: t for t in graph_outputs}
    wanted = [(c.name, c.data_type, "control input") for c in sequence.controls]
    wanted += [(s.input_name, s.data_type, "state input") for s in sequence.states]
    for name, data_type, what in wanted:
        node = inputs.get(name)
        if node is None:
            raise ConfigError(f"unable to load model '{folder}', sequence_batching {what} '{name}' is not an input "
                              f"of the model; its inputs are {sorted(inputs)}")
        if node.data_type != data_type:
            raise ConfigError(f"unable to load model '{folder}', sequence_batching {what} '{name}' is "
                              f"{data_type} in the configuration, the model takes {node.data_type}")
    for state in sequence.states:
        node = outputs.get(state.output_name)
        if node is None or node.data_type != state.data_type:
            raise ConfigError(f"unable to load model '{folder}', sequence_batching state output "
                              f"'{state.output_name}' must be an output of the model of {state.data_type}")
    kept = {s.output_name for s in sequence.states} - listed_outputs
    return (sequence, [t for t in graph_inputs if t.name not in sequence.extra_inputs],
            [t for t in graph_outputs if t.name not in kept])


def _only_tensors(folder: str, graph_inputs: list[GraphTensor], graph_outputs: list[GraphTensor]) -> None:
    for tensors, kind in ((graph_inputs, "input"), (graph_outputs, "output")):
        for tensor in tensors:
            if tensor.ort_type.startswith(("seq(", "map(", "optional(")):
                raise ConfigError(f"unable to autofill for '{folder}': {kind} '{tensor.name}' is of type "
                                  f"{tensor.ort_type}, not a tensor; nnserve serves tensor inputs and outputs only")


def complete(fields: dict[str, list] | None, folder: str, graph_inputs: list[GraphTensor],
             graph_outputs: list[GraphTensor], default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
             default_version_policy: dict | None = None, overridable: list[GraphTensor] = (),
             model_dir: Path | None = None) -> ModelConfig:
    """Auto-complete a (possibly absent or partial) config.pbtxt from the graph and validate it, as Triton does.
    A stateful model's control and state tensors (sequence_batching) are not the client's inputs and outputs."""
    fields = dict(fields or {})
    unknown = sorted(set(fields) - KNOWN_FIELDS)
    if unknown:
        raise ConfigError(f"config.pbtxt: unknown field(s) {unknown}")
    unsupported = [k for k in UNSUPPORTED_FIELDS if k in fields]
    if unsupported:
        raise ConfigError(f"config.pbtxt: {', '.join(unsupported)} is not supported by nnserve")
    name = one(fields, "name", str, "", folder)
    if name != folder:
        raise ConfigError(f"unexpected directory name '{folder}' for model '{name}', directory name must equal "
                          "model name")
    platform = one(fields, "platform", str, "", PLATFORM)
    backend = one(fields, "backend", str, "", BACKEND)
    if platform != PLATFORM or backend != BACKEND:
        raise ConfigError(f"platform '{platform}' / backend '{backend}': nnserve serves ONNX models only "
                          f"(platform '{PLATFORM}', backend '{BACKEND}')")
    filename = default_filename(fields)
    max_batch_size = one(fields, "max_batch_size", int, "", 0)
    if max_batch_size < 0:
        raise ConfigError(f"'max_batch_size' must be non-negative value for {folder}")
    _only_tensors(folder, graph_inputs, graph_outputs)
    inputs = [read_tensor(t, f"input[{i}]") for i, t in enumerate(fields.get("input", []))]
    outputs = [read_tensor(t, f"output[{i}]") for i, t in enumerate(fields.get("output", []))]
    sequence, graph_inputs, graph_outputs = _sequence(fields, folder, model_dir, graph_inputs, graph_outputs,
                                                      {t.name for t in outputs})
    batching = dynamic_batching(fields)
    if not (inputs and outputs):  # Triton auto-completes only when a side is missing
        if _can_batch(graph_inputs + graph_outputs):
            if max_batch_size == 0:
                max_batch_size = default_max_batch_size
            if max_batch_size > 1 and batching is None and sequence is None:
                batching = {}
        elif max_batch_size != 0:
            raise ConfigError(f"autofill failed for model '{folder}': model does not support batching while "
                              "non-zero max_batch_size is specified")
    if inputs:
        _validate("input", inputs, graph_inputs, max_batch_size, folder, overridable)
    else:
        inputs = [_from_graph(t, max_batch_size, "input") for t in graph_inputs]
    if outputs:
        _validate("output", outputs, graph_outputs, max_batch_size, folder)
    else:
        outputs = [_from_graph(t, max_batch_size, "output") for t in graph_outputs]
    preferred = (batching or {}).get("preferred_batch_size", [])
    if any(p > max_batch_size for p in preferred):
        raise ConfigError(f"dynamic batching preferred size must be <= max batch size for {folder}")
    ignored = [k for k in IGNORED_FIELDS if k in fields]
    return ModelConfig(name=folder, max_batch_size=max_batch_size, inputs=inputs, outputs=outputs,
                       version_policy=version_policy(fields) or default_version_policy or {"latest": {"num_versions": 1}},
                       dynamic_batching=batching, parameters=parameters(fields),
                       model_warmup=warmup_samples(fields), default_model_filename=filename, ignored=ignored,
                       sequence_batching=sequence)

