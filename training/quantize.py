"""Dynamic int8 quantization of an exported model's MatMul/Gemm weights, published only when it is measured to help.

Gates: no convolutions or recurrent/attention ops, a metric drop within budget, and faster int8 at the gate batch.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    import onnx

QUANTIZABLE_OPS = ("MatMul", "Gemm")
# Dynamic quantization of convolutions (ConvInteger) ran 2-10x slower here, and ORT quantizes LSTM and Attention
# weights with their own integer kernels that nothing in this project has measured. Any op type whose name contains "Conv" is refused as well (see _refused).
REFUSED_OPS = ("Conv", "ConvTranspose", "ConvInteger", "LSTM", "GRU", "RNN", "Attention", "MultiHeadAttention")
# The batch the speed gate is judged at: the batch the service's dynamic batcher forms under load. Batch 1 is known
# to be slower for int8 on this stack (the per-call DynamicQuantizeLinear of the activations is not amortized), so
# gating on it would refuse nearly every model; it is still measured and reported.
GATE_BATCH = 64
# The preprocessing hint ORT's quantize_dynamic logs on every call; shape inference is all the MLPs here need.
_PREPROCESS_HINT = "Please consider to run pre-processing before quantization"


@dataclass
class QuantizationDecision:
    """Whether to publish the int8 model, every reason it was refused, and the measured facts."""

    publish: bool
    reasons: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)


def _op_types(graph) -> Counter:
    """Op type -> node count over a graph and its subgraphs (If/Loop/Scan bodies)."""
    import onnx

    counts = Counter(node.op_type for node in graph.node)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                counts += _op_types(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    counts += _op_types(sub)
    return counts


def _refused(op_type: str) -> bool:
    return op_type in REFUSED_OPS or "Conv" in op_type


def eligibility(model: "onnx.ModelProto") -> list[str]:
    """Reasons the graph may not be dynamically quantized (empty list: it may be)."""
    counts = _op_types(model.graph)
    reasons = []
    refused = {op: n for op, n in sorted(counts.items()) if _refused(op)}
    if refused:
        found = ", ".join(f"{op} ({n} node{'s' if n > 1 else ''})" for op, n in refused.items())
        why = []
        if any("Conv" in op for op in refused):
            why.append("dynamic int8 convolutions ran 2-10x slower on this stack")
        if any("Conv" not in op for op in refused):
            why.append("int8 recurrent/attention kernels are unmeasured here")
        reasons.append(f"graph has op types that are never dynamically quantized: {found} ({'; '.join(why)})")
    if not any(counts[op] for op in QUANTIZABLE_OPS):
        reasons.append(f"graph has no {' or '.join(QUANTIZABLE_OPS)} node to quantize")
    return reasons


@contextlib.contextmanager
def _quiet_preprocessing_hint():
    """Drop ORT's preprocessing hint, logged on the root logger, without configuring logging as a side effect."""
    root = logging.getLogger()
    # logging.warning() calls basicConfig() when the root logger has no handler: a NullHandler prevents that.
    null = logging.NullHandler() if not root.handlers else None

    def keep(record: logging.LogRecord) -> bool:
        return _PREPROCESS_HINT not in record.getMessage()

    if null is not None:
        root.addHandler(null)
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
        if null is not None:
            root.removeHandler(null)


def quantize_dynamic_bytes(model_bytes: bytes) -> bytes:
    """int8 dynamic quantization of the MatMul/Gemm weights of a self-contained model; returns the model's bytes."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load_from_string(model_bytes)
    metadata = [(p.key, p.value) for p in model.metadata_props]
    # The dynamo exporter records value_info for every weight. In dynamic mode ORT rewrites Gemm(transB=1) as
    # MatMul over the transposed initializer but keeps the old value_info, and its own shape inference then
    # fails ("Inferred shape and existing shape differ"). Weight shapes come from the initializers anyway.
    initializers = {init.name for init in model.graph.initializer}
    keep = [vi for vi in model.graph.value_info if vi.name not in initializers]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    with tempfile.TemporaryDirectory(prefix="nnserve-quantize-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        with _quiet_preprocessing_hint():
            quantize_dynamic(src, dst, op_types_to_quantize=list(QUANTIZABLE_OPS), weight_type=QuantType.QInt8,
                             use_external_data_format=False)
        quantized = onnx.load(dst)  # loads any external data too: the bytes returned are self-contained
    # Exactly the float model's custom metadata (the quantizer adds its own "onnx.infer" marker).
    del quantized.metadata_props[:]
    for key, value in metadata:
        quantized.metadata_props.add(key=key, value=value)
    return quantized.SerializeToString()


def _session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one core each: comparable numbers on a small, shared machine
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def time_side_by_side(float_bytes: bytes, quant_bytes: bytes, make_feed: Callable[[int], dict[str, np.ndarray]],
                      batch_sizes=(1, 64), repeats: int = 200) -> dict:
    """Median seconds per session.run of both models at each batch size, interleaved call by call, one thread each."""
    sessions = {"float_s": _session(float_bytes), "int8_s": _session(quant_bytes)}
    order = list(sessions)
    result = {}
    for batch in batch_sizes:
        feed = make_feed(batch)
        for _ in range(max(10, repeats // 10)):  # warm-up: allocations, kernel caches
            for session in sessions.values():
                session.run(None, feed)
        samples: dict[str, list[float]] = {key: [] for key in sessions}
        for i in range(repeats):
            # Interleaved, and the order alternates, so drift and load from other work hit both models alike.
            for key in order if i % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                sessions[key].run(None, feed)
                samples[key].append(time.perf_counter() - start)
        medians = {key: statistics.median(values) for key, values in samples.items()}
        result[str(batch)] = {**medians, "speedup": medians["float_s"] / medians["int8_s"]}
    return result


def decide(model: "onnx.ModelProto", evaluate: Callable[[bytes], float],
           make_feed: Callable[[int], dict[str, np.ndarray]], higher_is_better: bool = True,
           max_drop_points: float = 0.5, gate_batch: int = GATE_BATCH, batch_sizes=(1, 64),
           repeats: int = 200) -> tuple[QuantizationDecision, bytes | None]:
    """Eligibility, quantization, metric drop and side-by-side speed gates; returns the decision and the int8 bytes."""
    float_bytes = model.SerializeToString()
    reasons = eligibility(model)
    report: dict = {"publish": False, "eligible": not reasons, "quantized_op_types": list(QUANTIZABLE_OPS),
                    "float_bytes": len(float_bytes)}
    if reasons:
        return QuantizationDecision(False, reasons, report), None
    try:
        quant_bytes = quantize_dynamic_bytes(float_bytes)
    except Exception as err:  # a failed optional optimization refuses; the float model is still published
        reasons.append(f"dynamic quantization failed: {type(err).__name__}: {err}")
        return QuantizationDecision(False, reasons, report), None
    report.update(int8_bytes=len(quant_bytes), size_ratio=len(quant_bytes) / len(float_bytes))

    before, after = float(evaluate(float_bytes)), float(evaluate(quant_bytes))
    # Points: 100 x the metric (percentage points for accuracy-like fractions); for errors the increase counts.
    drop = 100.0 * ((before - after) if higher_is_better else (after - before))
    report.update(metric_float=before, metric_int8=after, metric_drop_points=drop,
                  higher_is_better=higher_is_better, max_drop_points=max_drop_points)
    if not drop <= max_drop_points:  # also refuses a NaN
        reasons.append(f"metric {'dropped' if higher_is_better else 'worsened'} by {drop:.2f} points "
                       f"({before:.4f} -> {after:.4f}), more than the {max_drop_points:.2f} allowed")

    measured = tuple(dict.fromkeys([*batch_sizes, gate_batch]))  # the gate batch is always measured
    timings = time_side_by_side(float_bytes, quant_bytes, make_feed, measured, repeats)
    report.update(timings=timings, batch_sizes=list(measured), repeats=repeats, gate_batch=gate_batch,
                  intra_op_num_threads=1)
    gate = timings[str(gate_batch)]
    if not gate["speedup"] > 1.0:
        reasons.append(f"int8 is not faster at batch {gate_batch}: {gate['int8_s'] * 1e6:.1f} us vs float "
                       f"{gate['float_s'] * 1e6:.1f} us per call (speedup {gate['speedup']:.2f}x, needs > 1), "
                       f"medians of {repeats} interleaved runs")
    report["publish"] = not reasons
    return QuantizationDecision(not reasons, reasons, report), quant_bytes
