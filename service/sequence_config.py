"""config.pbtxt's `sequence_batching` block: the control inputs and implicit state of a stateful model.

What Triton's sequence batcher feeds a stateful model besides the client's inputs, for each request of a sequence:
- control inputs: CONTROL_SEQUENCE_START, _END and _READY as a [false, true] pair of INT32, FP32 or BOOL values
  (`int32_false_true`, `fp32_false_true`, `bool_false_true`), and CONTROL_SEQUENCE_CORRID, the sequence id itself
  (`data_type` UINT64, INT64, UINT32, INT32 or STRING);
- implicit state: each `state { input_name output_name data_type dims [initial_state] }` is a graph input fed
  with what the graph returned as `output_name` on the sequence's previous request; on its first request, with
  `initial_state` (zeros, or the bytes of a file in `<model>/initial_state/`), and zeros when there is none.

Each is a tensor of one row per request ([1, ...] when the model batches). nnserve keeps the state in
service/sequences.py's shared table; the state's dims must be fixed (no -1), so that every step's state fits the
sequence's slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.configfile import ints, one
from service.errors import BadRequest, ConfigError
from service.modelconfig import DATA_TYPES
from service.tensordata import NUMPY_DTYPES

DEFAULT_IDLE_MICROSECONDS = 1_000_000  # Triton's, when the block sets none
KINDS = {"CONTROL_SEQUENCE_START": "START", "CONTROL_SEQUENCE_END": "END", "CONTROL_SEQUENCE_READY": "READY",
         "CONTROL_SEQUENCE_CORRID": "CORRID"}
FLAG_VALUES = {"int32_false_true": "TYPE_INT32", "fp32_false_true": "TYPE_FP32", "bool_false_true": "TYPE_BOOL"}
CORRID_TYPES = ("TYPE_UINT64", "TYPE_INT64", "TYPE_UINT32", "TYPE_INT32", "TYPE_STRING")
BLOCK_FIELDS = {"max_sequence_idle_microseconds", "control_input", "state", "direct", "oldest",
                "iterative_sequence"}


@dataclass(frozen=True)
class Control:
    """One control input: `kind` START, END, READY or CORRID, with its [false, true] values (not for CORRID)."""

    name: str
    kind: str
    data_type: str
    values: tuple = ()


@dataclass(frozen=True)
class State:
    """One implicit state: fed as `input_name`, taken back from `output_name`."""

    input_name: str
    output_name: str
    data_type: str
    dims: tuple[int, ...]
    initial: bytes | None = None  # initial_state's bytes; None: zeros

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(NUMPY_DTYPES[DATA_TYPES[self.data_type]])

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64)) * self.dtype.itemsize


@dataclass(frozen=True)
class SequenceBatching:
    idle_microseconds: int
    controls: tuple[Control, ...]
    states: tuple[State, ...]
    block: dict  # as written, for the JSON form

    @property
    def state_nbytes(self) -> int:
        return sum(s.nbytes for s in self.states)

    @property
    def extra_inputs(self) -> set[str]:
        """The graph inputs the server feeds: control and state inputs, never listed as the model's inputs."""
        return {c.name for c in self.controls} | {s.input_name for s in self.states}

    def feed(self, sid_value: int | str, start: bool, end: bool, state: np.ndarray, batching: bool,
             rows: int = 1) -> dict:
        """The control and state inputs of one request. `state`: the slot's bytes (zeros after START); `rows`:
        the batch (1 for a sequence's request; more only for a warm-up sample)."""
        lead = (rows,) if batching else ()
        feed = {}
        for control in self.controls:
            dtype = NUMPY_DTYPES[DATA_TYPES[control.data_type]]
            if control.kind == "CORRID":
                if isinstance(sid_value, str) != (control.data_type == "TYPE_STRING"):
                    given = "BYTES" if isinstance(sid_value, str) else "UINT64"
                    raise BadRequest(f"sequence batching control '{control.name}' data-type is '{given}', but the "
                                     f"model expects '{DATA_TYPES[control.data_type]}'")
                value = sid_value
                if control.data_type != "TYPE_STRING":
                    value = np.array(sid_value, np.uint64).astype(dtype)  # truncated to the type, as Triton does
                feed[control.name] = np.full(lead + (1,), value, dtype=dtype)
                continue
            on = {"START": start, "END": end, "READY": True}[control.kind]
            feed[control.name] = np.full(lead + (1,), control.values[1 if on else 0], dtype=dtype)
        offset = 0
        for s in self.states:
            if start and s.initial is not None:
                raw = np.frombuffer(s.initial, s.dtype, int(np.prod(s.dims, dtype=np.int64)))
            else:
                raw = state[offset:offset + s.nbytes].view(s.dtype)
            feed[s.input_name] = np.broadcast_to(raw.reshape((1,) * len(lead) + s.dims), lead + s.dims).copy()
            offset += s.nbytes
        return feed

    def saved(self, outputs: dict[str, np.ndarray], batching: bool) -> bytes:
        """The new state bytes from the graph's state outputs, checked against the declared dims."""
        parts = []
        for s in self.states:
            value = np.asarray(outputs[s.output_name])
            want = ((1,) if batching else ()) + s.dims
            if value.shape != want or value.dtype != s.dtype:
                raise ConfigError(f"state '{s.output_name}': the graph returned {value.dtype}{list(value.shape)}, "
                                  f"the configuration declares {s.dtype}{list(want)}")
            parts.append(np.ascontiguousarray(value).tobytes())
        return b"".join(parts)

    def to_json(self) -> dict:
        """The block in Triton's JSON form (model_config.proto's ModelSequenceBatching)."""
        controls = []
        for c in self.controls:
            kind = next(k for k, v in KINDS.items() if v == c.kind)
            if c.kind == "CORRID":
                control = {"kind": kind, "data_type": c.data_type}
            else:
                key = next(k for k, v in FLAG_VALUES.items() if v == c.data_type)
                control = {"kind": kind, key: list(c.values)}
            controls.append({"name": c.name, "control": [control]})
        states = [{"input_name": s.input_name, "output_name": s.output_name, "data_type": s.data_type,
                   "dims": list(s.dims)} for s in self.states]
        return {"max_sequence_idle_microseconds": self.idle_microseconds, "control_input": controls, "state": states,
                "direct": self.block.get("direct", [{}])[0] if "oldest" not in self.block else None,
                **({"oldest": self.block["oldest"][0]} if "oldest" in self.block else {})}


def read_sequence_batching(block: Any, model_dir: Path) -> SequenceBatching:
    """The parsed `sequence_batching { ... }` block; ConfigError names the field and what was expected."""
    where = "sequence_batching"
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: expected a {{ ... }} block")
    unknown = sorted(set(block) - BLOCK_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(BLOCK_FIELDS)}")
    if "iterative_sequence" in block:
        raise ConfigError(f"{where}.iterative_sequence: not supported by nnserve")
    if "direct" in block and "oldest" in block:
        raise ConfigError(f"{where}: give one strategy, direct or oldest, not both")
    idle = one(block, "max_sequence_idle_microseconds", int, f"{where}.", DEFAULT_IDLE_MICROSECONDS)
    if idle <= 0:
        raise ConfigError(f"{where}.max_sequence_idle_microseconds: expected a positive integer, got {idle}")
    controls = tuple(_control(c, f"{where}.control_input[{i}]") for i, c in enumerate(block.get("control_input", [])))
    kinds = [c.kind for c in controls]
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            raise ConfigError(f"{where}.control_input: CONTROL_SEQUENCE_{kind} is given more than once")
    states = tuple(_state(s, f"{where}.state[{i}]", model_dir) for i, s in enumerate(block.get("state", [])))
    names = [c.name for c in controls] + [s.input_name for s in states]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a tensor is named by more than one control or state input: {names}")
    return SequenceBatching(idle, controls, states, block)


def _control(fields: Any, where: str) -> Control:
    name = one(fields, "name", str, f"{where}.")
    if not name:
        raise ConfigError(f"{where}.name: required")
    where = f"{where.split('[')[0]} '{name}'"
    entries = fields.get("control", [])
    if len(entries) != 1 or not isinstance(entries[0], dict):
        raise ConfigError(f"{where}: expected exactly one control {{ kind ... }}")
    control = entries[0]
    kind = KINDS.get(one(control, "kind", str, f"{where}: ", ""))
    if kind is None:
        raise ConfigError(f"{where}: kind must be one of {sorted(KINDS)}")
    given = [key for key in FLAG_VALUES if key in control]
    if kind == "CORRID":
        data_type = one(control, "data_type", str, f"{where}: ", "")
        if given or data_type not in CORRID_TYPES:
            raise ConfigError(f"{where}: CONTROL_SEQUENCE_CORRID takes a data_type, one of {list(CORRID_TYPES)}, "
                              "and no false/true values")
        return Control(name, kind, data_type)
    if len(given) != 1:
        raise ConfigError(f"{where}: expected exactly one of {list(FLAG_VALUES)}")
    values = control[given[0]]
    if len(values) != 2:
        raise ConfigError(f"{where}: {given[0]} must have 2 entries, the false and the true value, got {values!r:.40}")
    return Control(name, kind, FLAG_VALUES[given[0]], tuple(values))


def _state(fields: Any, where: str, model_dir: Path) -> State:
    input_name = one(fields, "input_name", str, f"{where}.", "")
    output_name = one(fields, "output_name", str, f"{where}.", "")
    if not input_name or not output_name:
        raise ConfigError(f"{where}: input_name and output_name are required")
    where = f"{where.split('[')[0]} '{input_name}'"
    data_type = one(fields, "data_type", str, f"{where}: ", "")
    if data_type not in DATA_TYPES or data_type == "TYPE_STRING":
        raise ConfigError(f"{where}: data_type must be a numeric or boolean TYPE_*, got {data_type!r}")
    dims = tuple(ints(fields, "dims", f"{where}: "))
    if any(d < 1 for d in dims):
        raise ConfigError(f"{where}: dims {list(dims)}: nnserve keeps states of fixed dims; give every size")
    state = State(input_name, output_name, data_type, dims)
    initial = fields.get("initial_state", [])
    if not initial:
        return state
    if len(initial) > 1 or not isinstance(initial[0], dict):
        raise ConfigError(f"{where}: at most one initial_state")
    init = initial[0]
    if one(init, "data_type", str, f"{where}: initial_state.", data_type) != data_type or \
            tuple(ints(init, "dims", f"{where}: initial_state.")) != dims:
        raise ConfigError(f"{where}: initial_state must have the state's data_type and dims")
    if not one(init, "name", str, f"{where}: initial_state.", ""):
        raise ConfigError(f"{where}: initial_state.name is required")
    if one(init, "zero_data", bool, f"{where}: initial_state.", False):
        return state
    file = one(init, "data_file", str, f"{where}: initial_state.", "")
    if not file:
        raise ConfigError(f"{where}: initial_state needs zero_data: true or a data_file")
    path = model_dir / "initial_state" / file
    if Path(file).name != file or not path.is_file():
        raise ConfigError(f"{where}: initial_state.data_file {file!r}: expected a file in the model's initial_state/ "
                          "folder")
    data = path.read_bytes()
    if len(data) < state.nbytes:
        raise ConfigError(f"{where}: initial_state.data_file {file!r} has {len(data)} bytes, the state needs "
                          f"{state.nbytes}")
    return State(input_name, output_name, data_type, dims, data[:state.nbytes])
