"""Tensor data of the Open Inference Protocol: JSON arrays and Triton's binary BYTES elements to numpy and back.

Each reader checks the data against the datatype and element count the request declared, and names the tensor
(`where`) in what it reports.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import numpy as np

from service.artifact import DATATYPES
from service.errors import BadRequest

NUMPY_DTYPES = {name: np.dtype(dt) for name, dt in DATATYPES.items()}
# Which numpy kinds a JSON array may arrive as for each V2 datatype ('i'/'u' ints, 'f' floats, 'b' bools).
ACCEPTED_JSON_KINDS = {
    **{name: "iu" for name in DATATYPES if name.startswith(("INT", "UINT"))},
    **{name: "iuf" for name in DATATYPES if name.startswith("FP")},
    "BOOL": "b",
}
MAX_DIMS = 8  # no model here has more; bounds the work a shape can ask for before the element count is known


def leaves(data: list, depth: int) -> Any:
    """The elements of the regular nested list `data` (`depth` levels), row-major, as an iterator that runs in C."""
    items: Any = data
    for _ in range(depth - 1):
        items = itertools.chain.from_iterable(items)
    return items


def element_types(data: list, depth: int) -> set[type]:
    """The Python types of the elements of `data`, about 20 ns an element. numpy reads [true, 0] as the integers
    [1, 0] and ["a", 1] as two strings, so what the JSON held is found only on the Python objects."""
    return set(map(type, leaves(data, depth)))


def contains_bool(data: list, depth: int) -> bool:
    """True when the regular nested list `data` (`depth` levels) holds a JSON true or false."""
    return bool in element_types(data, depth)


def array_from_json(where: str, data: Any, datatype: str, count: int) -> tuple[np.ndarray | None, str | None]:
    """Turn JSON `data` (flat or nested) into a flat array of `datatype`; return (array, problem)."""
    if not isinstance(data, list):
        return None, f"{where}.data: expected a list of numbers, got {type(data).__name__}"
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError):
        depth, item = 0, data
        while isinstance(item, list) and item:
            depth, item = depth + 1, item[0]
        if depth > MAX_DIMS:
            return None, f"{where}.data: nested {depth} levels deep; a tensor has at most {MAX_DIMS} dimensions"
        return None, f"{where}.data: nested lists must be regular (all rows the same length)"
    if datatype == "BYTES":
        return _strings_from_json(where, data, raw, count)
    kinds = ACCEPTED_JSON_KINDS[datatype]
    if raw.dtype.kind in "fO" and datatype in ("UINT64", "INT64") and raw.size:
        raw = _wide_integers(data, raw, datatype)  # numpy reads [1, 2**64 - 1] as floats
    if raw.size and raw.dtype.kind not in kinds:
        found = {"U": "strings", "O": "non-numbers or numbers out of range", "b": "booleans",
                 "f": "non-integer numbers", "i": "integers", "u": "integers"}.get(raw.dtype.kind, str(raw.dtype))
        return None, f"{where}.data: expected {datatype} values, got {found}"
    if raw.dtype.kind in "iuf" and raw.size and contains_bool(data, raw.ndim):
        # JSON true/false are BOOL data (V2 datatype BOOL); numpy would have read them as 1 and 0.
        return None, (f"{where}.data: expected {datatype} values, got booleans (true/false) among the numbers; "
                      "booleans are data of datatype BOOL")
    flat = raw.reshape(-1)
    if flat.size != count:
        return None, f"{where}.data: shape needs {count} elements, got {flat.size}"
    target = NUMPY_DTYPES[datatype]
    if raw.dtype.kind in "iu" and target.kind in "iu":
        info = np.iinfo(target)
        if flat.size and (flat.min() < info.min or flat.max() > info.max):
            return None, f"{where}.data: values out of range for {datatype}"
    return flat.astype(target, copy=False), None


def _wide_integers(data: list, raw: np.ndarray, datatype: str) -> np.ndarray:
    """JSON integers beyond int64 (or mixed with ones that are) as `datatype`, when every element is an integer."""
    if element_types(data, raw.ndim) != {int}:
        return raw
    try:
        return np.array(data, dtype=NUMPY_DTYPES[datatype])
    except OverflowError:
        return raw


def _strings_from_json(where: str, data: list, raw: np.ndarray, count: int) -> tuple[np.ndarray | None, str | None]:
    """BYTES elements given as JSON strings: every element a string."""
    items = list(leaves(data, raw.ndim))
    if raw.size and (raw.dtype.kind != "U" or set(map(type, items)) != {str}):
        found = sorted({type(x).__name__ for x in items if not isinstance(x, str)}) or [raw.dtype.name]
        return None, f"{where}.data: expected BYTES elements as JSON strings, got {', '.join(found)} among them"
    if len(items) != count:
        return None, f"{where}.data: shape needs {count} elements, got {len(items)}"
    try:
        "".join(items).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate sent as a \u escape
        return None, f"{where}.data: a string is not valid Unicode text (a lone surrogate escape)"
    array = np.empty(count, dtype=object)
    array[:] = items
    return array, None


def decode_bytes_elements(chunk: bytes | memoryview, count: int, where: str) -> np.ndarray:
    """Triton's binary BYTES: each element a 4-byte little-endian length, then that many bytes, row-major.

    ONNX Runtime's string tensors hold text, so each element must be UTF-8; raise BadRequest naming the tensor
    and the element otherwise, and for lengths past the end or a count that does not match the shape."""
    size = len(chunk)
    if count * 4 > size:
        raise BadRequest(f"{where}: {count} BYTES elements need at least {count * 4} bytes of length prefixes, "
                         f"the data has {size}")
    array = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > size:
            raise BadRequest(f"{where}: element {i}'s 4-byte length prefix runs past the end of the data")
        (length,) = struct.unpack_from("<I", chunk, pos)
        pos += 4
        if pos + length > size:
            raise BadRequest(f"{where}: element {i} declares {length} bytes, only {size - pos} are left")
        try:
            array[i] = bytes(chunk[pos:pos + length]).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"{where}: element {i} is not valid UTF-8; ONNX Runtime's string tensors hold "
                             "text, so BYTES elements must be UTF-8") from None
        pos += length
    if pos != size:
        raise BadRequest(f"{where}: {size - pos} bytes follow the {count} BYTES elements the shape holds")
    return array


def encode_bytes_elements(array: np.ndarray) -> bytes:
    """The binary form of a BYTES tensor (str elements as UTF-8, bytes as they are)."""
    return b"".join(len(b).to_bytes(4, "little") + b for b in (
        x if isinstance(x, bytes) else str(x).encode("utf-8") for x in array.reshape(-1)))
