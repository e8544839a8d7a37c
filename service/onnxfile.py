"""What a model file declares, read before ONNX Runtime sees it: an ONNX file is untrusted input.

A small reader of the protobuf wire format (the serving install has no `onnx` package) walks ModelProto for
its metadata_props, the tensors it stores (initializers, sparse initializers and Constant attributes, in every
subgraph), how many bytes they declare, and where their external data lives. The service refuses external data
outside the version folder and models over its memory limit before any session allocates anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# TensorProto.DataType -> bytes per element (strings count 0: their size is the data itself)
ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 8: 0, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16,
                 16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1}
MAX_DEPTH = 32  # nested subgraphs (If, Loop, Scan); deeper is refused rather than recursed into


class InvalidModelFile(ValueError):
    """The bytes are not a readable ONNX ModelProto."""


@dataclass
class ModelFacts:
    metadata: dict[str, str] = field(default_factory=dict)  # metadata_props
    tensor_bytes: int = 0  # what the stored tensors declare (dims x element size), in the file or outside
    external: list[str] = field(default_factory=list)  # external data locations, as written


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise InvalidModelFile("a varint runs past the end")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(data: memoryview):
    """(field number, wire type, value) of one message: ints for varints, memoryviews for the rest."""
    for number, wire, value, _, _ in _spans(data):
        yield number, wire, value


def _spans(data: memoryview):
    """(field number, wire type, value, start, end) of one message; data[start:end] is the whole field."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos:pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise InvalidModelFile(f"field {number} is {size} bytes long, past the end of its message")
            value, pos = data[pos:pos + size], pos + size
        else:
            raise InvalidModelFile(f"field {number} has wire type {wire}, which ONNX does not use")
        yield number, wire, value, start, pos


def _size(dims: list[int], element_bytes: int) -> int:
    """dims x element size, saturating at 2**63 (a file can declare a million dims)."""
    size = element_bytes
    for d in dims:
        size = min(size * d, 1 << 63)
    return size


def _tensor(data: memoryview, facts: ModelFacts, dense_dims: list[int] | None = None) -> None:
    """A TensorProto: its declared size (`dense_dims` for the values of a sparse tensor, which ONNX Runtime makes
    dense) and its external data location."""
    dims, data_type, external = [], 1, {}
    for number, wire, value in _fields(data):
        if number == 1:
            if wire == 2:  # packed
                pos = 0
                while pos < len(value):
                    d, pos = _varint(value, pos)
                    dims.append(d)
            else:
                dims.append(value)
        elif number == 2 and wire == 0:
            data_type = value
        elif number == 13 and wire == 2:
            entry = {n: bytes(v).decode("utf-8", "replace") for n, w, v in _fields(value) if w == 2}
            external[entry.get(1, "")] = entry.get(2, "")
    facts.tensor_bytes += _size(dense_dims if dense_dims is not None else dims, ELEMENT_BYTES.get(data_type, 8))
    if "location" in external:
        facts.external.append(external["location"])


def _graph(data: memoryview, facts: ModelFacts, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidModelFile(f"subgraphs nested more than {MAX_DEPTH} deep")
    for number, wire, value in _fields(data):
        if wire != 2:
            continue
        if number == 5:  # initializer
            _tensor(value, facts)
        elif number == 15:  # sparse_initializer
            _sparse(value, facts)
    _nodes(data, facts, depth, 1)


def _sparse(data: memoryview, facts: ModelFacts) -> None:
    """A SparseTensorProto: values (1) counted at the dense shape (3), indices (2) as stored."""
    parts: dict[int, list] = {1: [], 2: []}
    dims: list[int] = []
    for number, wire, value in _fields(data):
        if number in parts and wire == 2:
            parts[number].append(value)
        elif number == 3:
            dims += _varints(value) if wire == 2 else [value]
    for values in parts[1]:
        _tensor(values, facts, dims)
    for indices in parts[2]:
        _tensor(indices, facts)


def _varints(data: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        values.append(value)
    return values


def _nodes(data: memoryview, facts: ModelFacts, depth: int, field_number: int) -> None:
    """The attributes of the nodes (field `field_number`) of a GraphProto or FunctionProto."""
    for number, wire, node in _fields(data):
        if number == field_number and wire == 2:
            for n, w, attribute in _fields(node):
                if n == 5 and w == 2:
                    _attribute(attribute, facts, depth)


def _attribute(data: memoryview, facts: ModelFacts, depth: int) -> None:
    for number, wire, value in _fields(data):
        if wire != 2:
            continue
        if number in (5, 10):  # t, tensors
            _tensor(value, facts)
        elif number in (22, 23):  # sparse_tensor, sparse_tensors
            _sparse(value, facts)
        elif number in (6, 11):  # g, graphs
            _graph(value, facts, depth + 1)


def inspect(data: bytes) -> ModelFacts:
    """The facts of a serialized ModelProto; raise InvalidModelFile when it cannot be read."""
    facts = ModelFacts()
    view = memoryview(data)
    saw_graph = False
    for number, wire, value in _fields(view):
        if number == 7 and wire == 2:
            saw_graph = True
            _graph(value, facts, 0)
        elif number == 20 and wire == 2:  # training_info: initialization and algorithm graphs
            for n, w, graph in _fields(value):
                if n in (1, 2) and w == 2:
                    _graph(graph, facts, 1)
        elif number == 25 and wire == 2:  # functions: their nodes' constant attributes
            _nodes(value, facts, 1, 7)
        elif number == 14 and wire == 2:
            entry = {n: bytes(v).decode("utf-8", "replace") for n, w, v in _fields(value) if w == 2}
            facts.metadata[entry.get(1, "")] = entry.get(2, "")
    if not saw_graph:
        raise InvalidModelFile("it holds no graph")
    return facts


def unsafe_external_data(facts: ModelFacts, version_dir: Path) -> list[str]:
    """Every external data location that is not a regular file inside `version_dir` (no '..', no absolute path,
    no symbolic link anywhere on the way), each with the reason."""
    problems = []
    root = os.path.realpath(version_dir)
    for location in sorted(set(facts.external)):
        parts = location.split("/")
        if "\\" in location or "\0" in location:
            problems.append(f"external data {location[:100]!r} has a backslash or a NUL character; expected a relative "
                            "path inside the version folder")
            continue
        if not location or location.startswith("/") or ":" in parts[0] or ".." in parts:
            problems.append(f"external data '{location[:100]}' points outside the version folder")
            continue
        path = Path(version_dir, *parts)
        walk = [Path(version_dir, *parts[:i + 1]) for i in range(len(parts))]
        if any(p.is_symlink() for p in walk) or os.path.commonpath([root, os.path.realpath(path)]) != root:
            problems.append(f"external data '{location[:100]}' is a symbolic link; only regular files inside the "
                            "version folder are read")
        elif not path.is_file():
            problems.append(f"external data '{location[:100]}' is missing from the version folder")
    return problems


# ---------------------------------------------------------------- weights moved out, for workers to share

ALIGNMENT = 64 * 1024  # external data offsets: a multiple of any page size ONNX Runtime maps with


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _entry(key: str, value: str) -> bytes:  # a StringStringEntryProto
    return _length_delimited(13, _length_delimited(1, key.encode()) + _length_delimited(2, value.encode()))


def externalize(data: bytes, folder: Path, threshold: int, weights: str = "weights.bin") -> int:
    """Write `data` (a ModelProto) to `folder`/model.onnx with the raw data of every main-graph initializer of at
    least `threshold` bytes moved to `folder`/`weights`, each at an ALIGNMENT offset, as ONNX external data (which
    ONNX Runtime maps from the file instead of copying). Returns the bytes moved; other tensors stay in place."""
    view = memoryview(data)
    moved = 0
    with open(folder / weights, "wb") as out:
        def tensor(message: memoryview) -> bytes:
            nonlocal moved
            fields = list(_spans(message))
            raw = next((v for n, w, v, _, _ in fields if n == 9 and w == 2), None)
            if raw is None or len(raw) < threshold or any(n == 13 for n, _, _, _, _ in fields):
                return bytes(message)
            offset = -out.tell() % ALIGNMENT + out.tell()
            out.seek(offset)
            out.write(raw)
            moved += len(raw)
            kept = b"".join(bytes(message[a:b]) for n, _, _, a, b in fields if n != 9)
            return (kept + _entry("location", weights) + _entry("offset", str(offset))
                    + _entry("length", str(len(raw))) + _encode_varint(14 << 3) + _encode_varint(1))

        def graph(message: memoryview) -> bytes:
            return b"".join(_length_delimited(5, tensor(v)) if n == 5 and w == 2 else bytes(message[a:b])
                            for n, w, v, a, b in _spans(message))

        model = b"".join(_length_delimited(7, graph(v)) if n == 7 and w == 2 else bytes(view[a:b])
                         for n, w, v, a, b in _spans(view))
    (folder / "model.onnx").write_bytes(model)
    return moved
