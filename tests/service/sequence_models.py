"""Stateful models for the sequence tests, built with onnx.helper: an accumulator whose total is implicit state."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import ROOT

TRITON_EXAMPLES = ROOT / "tests" / "third_party" / "triton_examples"

ACCUMULATOR_CONFIG = """name: "{name}"
max_batch_size: 8
{policy}
sequence_batching {{
  max_sequence_idle_microseconds: {idle}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "READY" control [ {{ kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END bool_false_true: [ false, true ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid} }} ] }}
  ]
  state [ {{ input_name: "TOTAL_IN" output_name: "TOTAL_OUT" data_type: TYPE_INT64 dims: [ 1 ] }} ]
}}
input [ {{ name: "INPUT" data_type: TYPE_INT64 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_INT64 dims: [ 1 ] }}, {{ name: "ID" data_type: {corrid} dims: [ 1 ] }},
         {{ name: "LAST" data_type: TYPE_BOOL dims: [ 1 ] }} ]
"""


def accumulator_bytes(string_ids: bool) -> bytes:
    """OUTPUT = TOTAL_OUT = INPUT + TOTAL_IN * (READY and not START); ID echoes CORRID (UINT64, or the string id
    as BYTES), LAST echoes END."""
    from onnx import TensorProto as T
    from onnx import helper as h

    def vi(name: str, kind) -> object:
        return h.make_tensor_value_info(name, kind, ["batch", 1])

    corrid = T.STRING if string_ids else T.UINT64
    nodes = [h.make_node("Cast", ["START"], ["start"], to=T.BOOL), h.make_node("Not", ["start"], ["going"]),
             h.make_node("Cast", ["READY"], ["ready"], to=T.BOOL), h.make_node("And", ["going", "ready"], ["keep"]),
             h.make_node("Cast", ["keep"], ["keep64"], to=T.INT64), h.make_node("Mul", ["TOTAL_IN", "keep64"], ["kept"]),
             h.make_node("Add", ["INPUT", "kept"], ["total"]), h.make_node("Identity", ["total"], ["OUTPUT"]),
             h.make_node("Identity", ["total"], ["TOTAL_OUT"]), h.make_node("Identity", ["CORRID"], ["ID"]),
             h.make_node("Identity", ["END"], ["LAST"])]
    graph = h.make_graph(nodes, "accumulator",
                         [vi("TOTAL_IN", T.INT64), vi("INPUT", T.INT64), vi("START", T.INT32), vi("READY", T.INT32),
                          vi("END", T.BOOL), vi("CORRID", corrid)],
                         [vi("OUTPUT", T.INT64), vi("TOTAL_OUT", T.INT64), vi("ID", corrid), vi("LAST", T.BOOL)])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)], producer_name="nnserve tests")
    model.ir_version = 8
    return model.SerializeToString()


def add_accumulator(repo: Path, name: str = "acc", version: int = 1, idle_microseconds: int = 60_000_000,
                    latest_only: bool = False, string_ids: bool = False) -> Path:
    """The accumulator in `repo`; `string_ids`: its CORRID control is TYPE_STRING (else TYPE_UINT64)."""
    folder = repo / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / str(version) / "model.onnx").write_bytes(accumulator_bytes(string_ids))
    policy = "version_policy: { latest: { num_versions: 1 } }" if latest_only else ""
    (folder / "config.pbtxt").write_text(ACCUMULATOR_CONFIG.format(
        name=name, idle=idle_microseconds, policy=policy, corrid="TYPE_STRING" if string_ids else "TYPE_UINT64"))
    return folder


def add_simple_sequence(repo: Path) -> None:
    """Triton's own example model, its files as Triton ships them."""
    shutil.copytree(TRITON_EXAMPLES / "simple_sequence", repo / "simple_sequence")
