"""ONNX models that no one here wrote, for tests of a server that must serve any ONNX model.

The corpus holds scikit-learn pipelines converted by skl2onnx (trained on data shipped inside
scikit-learn) and graphs built with onnx.helper, covering string, FP16, INT8, BOOL, unsigned,
FP64, rank-0 and fixed-shape tensors. `hostile_models` holds models a loader must refuse.

Run `python -m tests.service.foreign_models` to load and run every model with ONNX Runtime.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
SECRET = np.arange(100, 116, dtype=np.float32)  # what the external-data models try to read: 64 bytes
HUGE_DIMS = (16384, 16384)  # FP32: 1 GiB


@dataclass
class ForeignModel:
    name: str  # folder name in a repository
    onnx_bytes: bytes
    inputs: dict[str, np.ndarray]  # a sample request; string tensors as object arrays of str
    description: str  # what it is and which tool made it
    batchable: bool  # every input and output has a dynamic (symbolic or unknown) first dim


def _is_batchable(model: onnx.ModelProto) -> bool:
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            return False
    return True


def _foreign(name: str, model: onnx.ModelProto, inputs: dict[str, np.ndarray], description: str) -> ForeignModel:
    onnx.checker.check_model(model, full_check=True)
    return ForeignModel(name, model.SerializeToString(), inputs, description, _is_batchable(model))


def _graph_model(nodes: list[onnx.NodeProto], inputs: list, outputs: list, initializer: list | None = None,
                 domains: Mapping[str, int] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "foreign", inputs, outputs, initializer=initializer or [])
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="onnx.helper")


def _vi(name: str, elem_type: int, shape: list[int | str | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _sklearn_models() -> list[ForeignModel]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_diabetes, load_wine
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    wine = load_wine()
    alcohol = wine.data[:, 0]
    low, high = np.quantile(alcohol, [1 / 3, 2 / 3])
    level = np.where(alcohol < low, "low", np.where(alcohol < high, "mid", "high")).astype(object)
    measures = wine.data[:, [1, 2, 9, 12]].astype(np.float32)  # malic_acid, ash, color_intensity, proline
    table = np.empty((len(level), 5), dtype=object)
    table[:, 0], table[:, 1:] = level, measures
    clf = LogisticRegression(max_iter=1000)
    prep = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), [0]), ("num", StandardScaler(), [1, 2, 3, 4])])
    pipeline = Pipeline([("prep", prep), ("clf", clf)]).fit(table, wine.target_names[wine.target])
    wine_onnx = convert_sklearn(
        pipeline, "wine", initial_types=[("level", StringTensorType([None, 1])), ("measures", FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}},
    )
    string_input = wine_onnx.graph.input[0].type.tensor_type.elem_type
    assert string_input == TensorProto.STRING, string_input
    rows = [0, 70, 140, 177]

    diabetes = load_diabetes()
    forest = RandomForestRegressor(n_estimators=16, max_depth=6, random_state=0).fit(diabetes.data, diabetes.target)
    ridge = Ridge(alpha=0.5).fit(diabetes.data, diabetes.target)
    return [
        _foreign("skl-wine-pipeline", wine_onnx,
                 {"level": level[rows].reshape(-1, 1), "measures": measures[rows]},
                 "skl2onnx: ColumnTransformer(OneHotEncoder on a string column, StandardScaler) + LogisticRegression on "
                 "load_wine, string labels, ZipMap off"),
        _foreign("skl-diabetes-forest",
                 convert_sklearn(forest, "forest", initial_types=[("X", FloatTensorType([None, 10]))]),
                 {"X": diabetes.data[:3].astype(np.float32)},
                 "skl2onnx: RandomForestRegressor on load_diabetes (ai.onnx.ml TreeEnsembleRegressor), FP32"),
        _foreign("skl-diabetes-ridge-fp64",
                 convert_sklearn(ridge, "ridge", initial_types=[("X", DoubleTensorType([None, 10]))]),
                 {"X": diabetes.data[:2].astype(np.float64)},
                 "skl2onnx: Ridge on load_diabetes with FP64 input and output"),
    ]


def _helper_models() -> list[ForeignModel]:
    rng = np.random.default_rng(0)
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    return [
        _foreign("multi-io", _graph_model(
            [helper.make_node("Cast", ["n"], ["n_float"], to=f),
             helper.make_node("Add", ["x", "n_float"], ["sum"]),
             helper.make_node("Mul", ["n", "n"], ["square"]),
             helper.make_node("Cast", ["x"], ["positive"], to=TensorProto.BOOL)],
            [_vi("x", f, ["batch", 3]), _vi("n", i64, ["batch", 3])],
            [_vi("sum", f, ["batch", 3]), _vi("square", i64, ["batch", 3]), _vi("positive", TensorProto.BOOL, ["batch", 3])]),
            {"x": rng.standard_normal((2, 3)).astype(np.float32), "n": np.array([[1, -2, 3], [4, 0, -6]], np.int64)},
            "onnx.helper: FP32 and INT64 inputs, FP32/INT64/BOOL outputs (Cast, Add, Mul)"),
        _foreign("no-batch-dim", _graph_model(
            [helper.make_node("Transpose", ["matrix"], ["transposed"], perm=[1, 0])],
            [_vi("matrix", f, [3, 4])], [_vi("transposed", f, [4, 3])]),
            {"matrix": np.arange(12, dtype=np.float32).reshape(3, 4)},
            "onnx.helper: fixed [3,4] FP32 input transposed to [4,3], no batch dim"),
        _foreign("fp16-int8", _graph_model(
            [helper.make_node("Cast", ["small"], ["small_half"], to=TensorProto.FLOAT16),
             helper.make_node("Add", ["half", "small_half"], ["half_sum"]),
             helper.make_node("Neg", ["small"], ["small_neg"])],
            [_vi("half", TensorProto.FLOAT16, ["batch", 2]), _vi("small", TensorProto.INT8, ["batch", 2])],
            [_vi("half_sum", TensorProto.FLOAT16, ["batch", 2]), _vi("small_neg", TensorProto.INT8, ["batch", 2])]),
            {"half": np.array([[0.5, -1.25], [3.0, 65504.0]], np.float16), "small": np.array([[1, -2], [127, -127]], np.int8)},
            "onnx.helper: FP16 and INT8 inputs, FP16 (Cast, Add) and INT8 (Neg) outputs"),
        _foreign("names-with-slashes", _graph_model(
            [helper.make_node("Sigmoid", ["input/0:x.y"], ["out/prob:0"])],
            [_vi("input/0:x.y", f, ["batch", 2])], [_vi("out/prob:0", f, ["batch", 2])]),
            {"input/0:x.y": np.array([[0.0, 1.0], [-2.0, 4.0]], np.float32)},
            "onnx.helper: Sigmoid with TensorFlow-style tensor names holding '/', ':' and '.'"),
        _foreign("string-in-out", _graph_model(
            # locale "C": the default en_US.UTF-8 fails in ORT where that locale is not installed
            [helper.make_node("StringNormalizer", ["text"], ["lower"], case_change_action="LOWER", locale="C"),
             helper.make_node("Concat", ["tokens", "tokens"], ["tokens_twice"], axis=1)],
            [_vi("text", TensorProto.STRING, ["batch"]), _vi("tokens", TensorProto.STRING, ["batch", 2])],
            [_vi("lower", TensorProto.STRING, ["batch"]), _vi("tokens_twice", TensorProto.STRING, ["batch", 4])]),
            {"text": np.array(["Hello World", "ONNX", ""], dtype=object),
             "tokens": np.array([["a", "b c"], ["", "ünï"], ["x", "y"]], dtype=object)},
            "onnx.helper: StringNormalizer (LOWER, locale C) and Concat on string tensors"),
        _foreign("scalar-io", _graph_model(
            [helper.make_node("ReduceSum", ["values"], ["total"], keepdims=0),
             helper.make_node("Mul", ["values", "scale"], ["scaled"])],
            [_vi("values", f, ["n"]), _vi("scale", f, [])], [_vi("total", f, []), _vi("scaled", f, ["n"])]),
            {"values": np.array([1.0, 2.0, 3.5], np.float32), "scale": np.array(2.0, np.float32)},
            "onnx.helper: rank-0 input 'scale' and rank-0 output 'total' (ReduceSum keepdims=0)"),
        _foreign("bool-uint", _graph_model(
            [helper.make_node("Not", ["mask"], ["inverted"]), helper.make_node("Identity", ["u16"], ["u16_out"]),
             helper.make_node("Add", ["u32", "u32"], ["u32_twice"]), helper.make_node("Identity", ["u64"], ["u64_out"])],
            [_vi("mask", TensorProto.BOOL, ["batch", 3]), _vi("u16", TensorProto.UINT16, ["batch", 3]),
             _vi("u32", TensorProto.UINT32, ["batch", 3]), _vi("u64", TensorProto.UINT64, ["batch", 3])],
            [_vi("inverted", TensorProto.BOOL, ["batch", 3]), _vi("u16_out", TensorProto.UINT16, ["batch", 3]),
             _vi("u32_twice", TensorProto.UINT32, ["batch", 3]), _vi("u64_out", TensorProto.UINT64, ["batch", 3])]),
            {"mask": np.array([[True, False, True]]), "u16": np.array([[0, 1, 65535]], np.uint16),
             "u32": np.array([[0, 7, 2**31]], np.uint32), "u64": np.array([[0, 2**40, 2**64 - 1]], np.uint64)},
            "onnx.helper: BOOL (Not), UINT16 and UINT64 (Identity), UINT32 (Add) tensors"),
    ]


@functools.cache
def build_corpus() -> list[ForeignModel]:
    """Every foreign model, built once per process with fixed seeds."""
    return _sklearn_models() + _helper_models()


def write_model(repo: Path, model: ForeignModel, version: int = 1) -> Path:
    """Write <repo>/<name>/<version>/model.onnx and return the version folder."""
    folder = repo / model.name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(model.onnx_bytes)
    return folder


def expected_outputs(model: ForeignModel, feed: Mapping[str, np.ndarray] | None = None,
                     output_names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Outputs of ONNX Runtime (CPU, in process) on `feed`, by default the model's sample inputs."""
    session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
    names = output_names or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(model.inputs if feed is None else feed)), strict=True))


def _external_initializer(location: str, dims: tuple[int, ...], length: int) -> TensorProto:
    tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def _add_initializer(weight: TensorProto) -> bytes:
    """Y = X + W: an unguarded load of W's data echoes it back in Y when X is zeros."""
    shape = list(weight.dims)
    nodes = [helper.make_node("Add", ["X", "W"], ["Y"])]
    model = _graph_model(nodes, [_vi("X", TensorProto.FLOAT, shape)], [_vi("Y", TensorProto.FLOAT, shape)], [weight])
    return model.SerializeToString()


@functools.cache
def _hostile_bytes() -> dict[str, bytes]:
    f = TensorProto.FLOAT
    valid = _add_initializer(numpy_helper.from_array(SECRET.reshape(4, 4), "W"))
    return {
        "external-data-parent": _add_initializer(_external_initializer("../secret.bin", (4, 4), SECRET.nbytes)),
        "external-data-absolute": _add_initializer(_external_initializer("/etc/passwd", (4, 4), SECRET.nbytes)),
        "external-data-symlink": _add_initializer(_external_initializer("weights.bin", (4, 4), SECRET.nbytes)),
        "unknown-domain": _graph_model([helper.make_node("Foo", ["x"], ["y"], domain="com.example.unknown")],
                                       [_vi("x", f, ["batch", 2])], [_vi("y", f, ["batch", 2])],
                                       domains={"com.example.unknown": 1}).SerializeToString(),
        "unloadable": _graph_model([helper.make_node("Add", ["x", "ghost"], ["y"])],
                                   [_vi("x", f, ["batch", 2])], [_vi("y", f, ["batch", 2])]).SerializeToString(),
        "empty": b"",
        "truncated": valid[: len(valid) // 2],
        "huge-initializer": _add_initializer(
            helper.make_tensor("W", f, [4096, 4096], np.zeros(4096 * 4096, np.float32).tobytes(), raw=True)),
        "huge-external": _add_initializer(_external_initializer("huge.bin", HUGE_DIMS, 4 * HUGE_DIMS[0] * HUGE_DIMS[1])),
    }


def hostile_models(tmp: Path) -> dict[str, bytes]:
    """Serialized models a loader must refuse, by case; writes SECRET's bytes to tmp/secret.bin.

    external-data-*: FP32 initializer W [4,4] stored as external data (64 bytes at offset 0) at
    "../secret.bin", "/etc/passwd" or "weights.bin". For a real threat, put SECRET's bytes at
    version_dir.parent/"secret.bin" and call place_symlinked_external(version_dir, tmp/"secret.bin").
    ONNX Runtime 1.31 refuses all three itself when loading from the path.
    huge-initializer: a real 64 MiB raw FP32 initializer [4096,4096] inside the file.
    huge-external: W declared as FP32 [16384,16384] (1 GiB) in "huge.bin" in the version folder;
    place_sparse_file(version_dir/"huge.bin", 2**30) makes it loadable without using disk (ORT 1.31
    maps it lazily and loads it in milliseconds, so only a declared-size limit catches it).
    declared_initializer_bytes gives the size a limit checks before ONNX Runtime allocates anything.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "secret.bin").write_bytes(SECRET.tobytes())
    return dict(_hostile_bytes())


def place_symlinked_external(version_dir: Path, target: Path) -> Path:
    """Create version_dir/weights.bin as a symlink to `target` (outside the repository)."""
    link = version_dir / "weights.bin"
    link.symlink_to(target)
    return link


def place_sparse_file(path: Path, size: int) -> Path:
    """Create a file of `size` zero bytes that occupies (almost) no disk."""
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


def declared_initializer_bytes(onnx_bytes: bytes) -> int:
    """Bytes that initializers and tensor attributes of all graphs declare, without reading external data.

    An external tensor counts its "length" entry, else dims x element size, so a limit holds before ORT maps it.
    """
    def tensor_bytes(t: TensorProto) -> int:
        if t.data_location == TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in t.external_data}
            if "length" in entries:
                return int(entries["length"])
        if t.data_type == TensorProto.STRING:
            return sum(len(s) for s in t.string_data)
        return math.prod(t.dims) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize

    def graph_bytes(g: onnx.GraphProto) -> int:
        total = sum(tensor_bytes(t) for t in g.initializer)
        total += sum(tensor_bytes(s.values) + tensor_bytes(s.indices) for s in g.sparse_initializer)
        for node in g.node:
            for a in node.attribute:
                total += sum(graph_bytes(sub) for sub in [*([a.g] if a.HasField("g") else []), *a.graphs])
                total += sum(tensor_bytes(t) for t in [*([a.t] if a.HasField("t") else []), *a.tensors])
        return total

    return graph_bytes(onnx.load_model_from_string(onnx_bytes).graph)


def _describe(args: list[ort.NodeArg]) -> str:
    return ", ".join(f"{a.name!r} {a.type} {a.shape}" for a in args)


def _main() -> None:
    import tempfile
    import time

    ort.set_default_logger_severity(4)  # ORT's own log repeats every refusal on stderr
    start = time.perf_counter()
    corpus = build_corpus()
    print(f"built {len(corpus)} models in {time.perf_counter() - start:.2f} s")
    assert len({m.name for m in corpus}) == len(corpus)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for model in corpus:
            session = ort.InferenceSession(str(write_model(tmp / "repo", model) / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
            outputs = expected_outputs(model)
            assert set(outputs) == {o.name for o in session.get_outputs()}
            print(f"\n{model.name} (batchable={model.batchable}): {model.description}")
            print(f"  inputs:  {_describe(session.get_inputs())}")
            print(f"  outputs: {_describe(session.get_outputs())}")
            print("  ran:", {k: (v.dtype, v.shape) for k, v in outputs.items()})
        hostile = hostile_models(tmp)
        for case, data in hostile.items():
            version_dir = tmp / "hostile" / case / "1"
            version_dir.mkdir(parents=True)
            (version_dir / "model.onnx").write_bytes(data)
            if case == "external-data-parent":
                (version_dir.parent / "secret.bin").write_bytes(SECRET.tobytes())
            if case == "external-data-symlink":
                place_symlinked_external(version_dir, tmp / "secret.bin")
            declared = declared_initializer_bytes(data) if data and case != "truncated" else 0
            try:
                session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
                verdict = f"LOADED by ORT ({[i.name for i in session.get_inputs()]})"
            except Exception as error:  # noqa: BLE001 - ORT raises several types
                verdict = f"{type(error).__name__}: {str(error).strip()[:300]}"
            print(f"\nhostile {case} ({len(data)} bytes, initializers declare {declared} bytes): {verdict}")
    print(f"\nall done in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    _main()
