"""Warm-up of a loaded version before it serves: config.pbtxt's model_warmup samples, or one sample of zeros."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from service import artifact
from service.errors import BadRequest, LoadError
from service.modelconfig import DATA_TYPES, MAX_WARMUP_ELEMENTS
from service.tensordata import NUMPY_DTYPES, decode_bytes_elements

log = logging.getLogger(__name__)
FLOAT_TYPES = ("FP16", "FP32", "FP64")


def warm_up(model, model_dir: Path) -> None:
    """Run the warm-up requests on `model` (a runtime.LoadedModel); raise LoadError when a sample of config.pbtxt
    fails. Zeros are made up, so a failure on them is logged and the version serves."""
    sequence = model.config.sequence_batching
    for sample, feed in warmup_feeds(model, model_dir):
        if sequence is not None:  # the controls and states of a sequence's first request, for each row
            rows = next(iter(feed.values())).shape[0] if model.batching and feed else 1
            feed = {**feed, **sequence.feed(1, True, False, np.zeros(sequence.state_nbytes, np.uint8), model.batching,
                                            rows)}
        try:
            model.session.run(None, feed)
        except Exception as exc:  # ORT raises its own types
            if sample:  # config.pbtxt's own sample must run, as in Triton
                raise LoadError(f"failed to run warmup sample '{sample}': warm-up inference failed: "
                                f"{str(exc)[:300]}") from None
            log.warning("%s version %s: warm-up on zeros failed (%s); serving it, since zeros are made up",
                        model.name, model.version, str(exc)[:200])
            break


def warmup_feeds(model, model_dir: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The warm-up requests as (sample name, feed): config.pbtxt's model_warmup samples (each one request of
    batch_size samples, run `count` times), else ("", one batch-1 sample of zeros) when every input is floating
    point. Integer, boolean and string inputs may be data the graph depends on (shapes, indices, lengths), and
    made-up values could fail a valid model, so such a model is not warmed up without samples."""
    if not model.config.model_warmup:
        return _zeros_feed(model)
    feeds = []
    rng = np.random.default_rng(0)
    for sample in model.config.model_warmup:
        if sample["batch_size"] == 0:  # Triton skips such a sample
            continue
        batch = [sample["batch_size"]] if model.batching else []
        feed = {}
        for name, spec in sample["inputs"].items():
            if name not in model.inputs:
                raise LoadError(f"config.pbtxt: model_warmup '{sample['name']}' names input '{name}', which the "
                                f"model does not have")
            shape = batch + spec["dims"]
            if -1 in shape or math.prod(shape) > MAX_WARMUP_ELEMENTS:
                raise LoadError(f"config.pbtxt: model_warmup '{sample['name']}' input '{name}': dims {spec['dims']} "
                                f"must be fixed and hold at most {MAX_WARMUP_ELEMENTS} elements")
            feed[name] = _sample_input(model_dir, sample["name"], spec, shape, rng)
            model_shape = model.model_shapes.get(name)
            if model_shape is not None:
                feed[name] = feed[name].reshape(batch + model_shape[len(batch):])
        feeds += [(sample["name"], feed)] * max(1, sample["count"])
    return feeds


def _zeros_feed(model) -> list[tuple[str, dict[str, np.ndarray]]]:
    """("", one batch-1 sample of zeros) when every input is floating point and small enough, else nothing."""
    if not all(spec["datatype"] in FLOAT_TYPES for spec in model.input_specs):
        log.info("%s version %s: no model_warmup in config.pbtxt and inputs that may be data: not warmed up",
                 model.name, model.version)
        return []
    feed = {}
    for spec in model.input_specs:
        shape = [1 if d == -1 else d for d in model.model_shapes.get(spec["name"], spec["shape"])]
        if math.prod(shape) > MAX_WARMUP_ELEMENTS:
            return []
        feed[spec["name"]] = np.zeros(shape, dtype=NUMPY_DTYPES[spec["datatype"]])
    return [("", feed)]


def _sample_input(model_dir: Path, sample: str, spec: dict, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """One input of a model_warmup sample: from its input_data_file, zeros, or random integers 0-9."""
    dtype = NUMPY_DTYPES[DATA_TYPES[spec["data_type"]]]
    if "input_data_file" in spec:
        return _warmup_file(model_dir, spec["input_data_file"], dtype, shape, sample)
    if dtype.kind == "O":
        return np.full(shape, "" if "zero_data" in spec else "warmup", dtype=object)
    if "random_data" in spec and dtype.kind in "iuf":
        return rng.integers(0, 10, shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _warmup_file(model_dir: Path, filename: str, dtype: np.dtype, shape: list[int], sample: str) -> np.ndarray:
    """Triton's input_data_file: raw little-endian values (BYTES: length-prefixed) in <model>/warmup/."""
    where = f"config.pbtxt: model_warmup '{sample}' input_data_file '{filename[:64]}'"
    if not artifact.is_valid_name(filename):
        raise LoadError(f"{where}: expected a file name inside the model's warmup folder")
    path = model_dir / "warmup" / filename
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"{where}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    count = math.prod(shape)
    if dtype.kind == "O":
        try:
            return decode_bytes_elements(data, count, where).reshape(shape)
        except BadRequest as exc:
            raise LoadError(exc.message) from None
    if len(data) != count * dtype.itemsize:
        raise LoadError(f"{where}: holds {len(data)} bytes, the sample needs {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)
