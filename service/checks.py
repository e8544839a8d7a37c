"""A request's inputs and outputs checked against one model version: names, datatypes, shapes, limits and values.

Every problem is collected, then raised once as InvalidInput; what passes becomes the session's feed, in the
model's own shapes where config.pbtxt reshapes.
"""

from __future__ import annotations

import numpy as np

from service.errors import InvalidInput
from service.protocol import InferRequest, RequestInput, clip


def shape_matches(expected: list[int], got: list[int]) -> bool:
    return len(expected) == len(got) and all(e == -1 or e == g for e, g in zip(expected, got))


def check_request(model, request: InferRequest, max_batch_size: int) -> dict[str, np.ndarray]:
    """Check every input of `request` against `model` (a runtime.LoadedModel); return the feed, or raise
    InvalidInput with all problems."""
    problems = list(request.problems)
    feed: dict[str, np.ndarray] = {}
    batch_sizes = set()
    for tensor in request.inputs:
        spec = model.inputs.get(tensor.name)
        if spec is None:
            problems.append(f"unexpected input '{clip(tensor.name)}'; the model's inputs are {list(model.inputs)}")
            continue
        if tensor.name in feed:
            problems.append(f"input '{tensor.name}' is given more than once")
            continue
        array = _check_input(model, tensor, spec, max_batch_size, problems)
        if array is None:
            continue
        if model.batching and tensor.shape:
            batch_sizes.add(tensor.shape[0])
        if tensor.name in model.model_shapes:
            array = _to_model_shape(model, tensor, array, problems)
            if array is None:
                continue
        feed[tensor.name] = array
    given = {t.name for t in request.inputs}
    for name in model.required_inputs:
        if name not in given:
            spec = model.inputs[name]
            problems.append(f"missing input '{name}' ({spec['datatype']} {spec['shape']})")
    if len(batch_sizes) > 1:
        problems.append(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    _check_outputs(model, request, problems)
    if problems:
        raise InvalidInput(model.name, problems)
    return feed


def _check_input(model, tensor: RequestInput, spec: dict, max_batch_size: int,
                 problems: list[str]) -> np.ndarray | None:
    """The input's datatype, shape and values; its array when they fit (shape problems are listed with the rest)."""
    if tensor.datatype != spec["datatype"]:
        problems.append(f"input '{tensor.name}': expected datatype {spec['datatype']}, got {tensor.datatype}")
    _check_shape(model, tensor, spec, max_batch_size, problems)
    if tensor.array is None or tensor.datatype != spec["datatype"]:
        return None
    if tensor.array.dtype.kind == "f" and not np.isfinite(tensor.array).all():
        bad = int(np.flatnonzero(~np.isfinite(tensor.array.reshape(-1)))[0])
        problems.append(f"input '{tensor.name}': values must be finite, found "
                        f"{tensor.array.reshape(-1)[bad]} at flat index {bad}")
        return None
    if tensor.name == model.classes_input and model.num_classes and tensor.array.size and (
            tensor.array.min() < 0 or tensor.array.max() >= model.num_classes):
        problems.append(f"input '{tensor.name}': class indices must be in 0..{model.num_classes - 1}, got "
                        f"values from {tensor.array.min()} to {tensor.array.max()}")
        return None
    limits = model.input_limits.get(tensor.name)
    problem = _limit_problem(tensor.name, tensor.array.reshape(-1), limits) if limits and tensor.array.size else None
    if problem:
        problems.append(problem)
        return None
    return tensor.array


def _limit_problem(name: str, flat: np.ndarray, limits: dict) -> str | None:
    """Why values break the bounds the model's metadata declares for an input, or None."""
    if "max_bytes" in limits:
        sizes = np.fromiter((len(x.encode("utf-8")) for x in flat), dtype=np.int64, count=flat.size)
        i = int(sizes.argmax())
        if sizes[i] > limits["max_bytes"]:
            return (f"input '{name}': element {i} holds {sizes[i]} bytes; the model takes at most "
                    f"{limits['max_bytes']} bytes per element")
    for key, pick, breaks, bound in (("minimum", np.argmin, np.less, "at least"),
                                     ("maximum", np.argmax, np.greater, "at most")):
        if key in limits:
            i = int(pick(flat))
            if breaks(flat[i], limits[key]):
                return f"input '{name}': values must be {bound} {limits[key]}, got {flat[i]} at flat index {i}"
    return None


def _check_shape(model, tensor: RequestInput, spec: dict, max_batch_size: int, problems: list[str]) -> None:
    """The API's shape (or the model's own, where config.pbtxt reshapes), the batch size and sequence length."""
    model_shape = model.model_shapes.get(tensor.name)
    if not (shape_matches(spec["shape"], tensor.shape)
            or model_shape is not None and shape_matches(model_shape, tensor.shape)):
        reason = model.shape_reasons.get(tensor.name)
        problems.append(f"input '{tensor.name}': expected shape {spec['shape']}, got {tensor.shape}"
                        + (f" (each sample: {reason})" if reason else ""))
    elif 0 in tensor.shape:
        problems.append(f"input '{tensor.name}': every dimension must be at least 1, got {tensor.shape}")
    elif model.batching and tensor.shape[0] > max_batch_size:
        problems.append(f"input '{tensor.name}': batch size {tensor.shape[0]} exceeds the maximum of "
                        f"{max_batch_size}; split the request")
    elif any(d > model.max_sequence_length for d, want in zip(tensor.shape[1:], spec["shape"][1:]) if want == -1):
        problems.append(f"input '{tensor.name}': sequence length {tensor.shape[1]} exceeds the maximum of "
                        f"{model.max_sequence_length}")


def _to_model_shape(model, tensor: RequestInput, array: np.ndarray, problems: list[str]) -> np.ndarray | None:
    """config.pbtxt's reshape: the API's shape to the model's (dims and reshape hold one -1 at most)."""
    model_shape = model.model_shapes[tensor.name]
    if shape_matches(model_shape, tensor.shape):
        return array
    try:
        return array.reshape([array.shape[0]] + model_shape[1:] if model.batching else model_shape)
    except ValueError:
        problems.append(f"input '{tensor.name}': shape {tensor.shape} cannot be reshaped to the model's "
                        f"{model_shape}")
        return None


def _check_outputs(model, request: InferRequest, problems: list[str]) -> None:
    """The outputs asked for exist, and classification is asked only of numeric ones."""
    if request.outputs is None:
        return
    for out in request.outputs:
        if out.name not in model.outputs:
            problems.append(f"unknown output '{clip(out.name)}'; the model's outputs are {model.output_names}")
        elif out.classification and model.outputs[out.name]["datatype"] in ("BYTES", "BOOL"):
            problems.append(f"output '{out.name}': classification ranks numeric scores, the output is "
                            f"{model.outputs[out.name]['datatype']}")
