"""Open Inference Protocol (V2) request decoding and response encoding, JSON and Triton binary tensors.

Transport-free: takes and returns bytes and plain objects, so the HTTP layer stays thin. Checks against a
particular model (names, shapes, datatypes) live in runtime.py; this module checks only the protocol's form.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import reprlib
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.artifact import DATATYPES
from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, join_problems

NUMPY_DTYPES = {name: np.dtype(dt) for name, dt in DATATYPES.items()}
# Which numpy kinds a JSON array may arrive as for each V2 datatype ('i'/'u' ints, 'f' floats, 'b' bools).
ACCEPTED_JSON_KINDS = {
    **{name: "iu" for name in DATATYPES if name.startswith(("INT", "UINT"))},
    **{name: "iuf" for name in DATATYPES if name.startswith("FP")},
    "BOOL": "b",
}
HEADER_LENGTH = "Inference-Header-Content-Length"
PARAMETER_TYPES = (str, int, float, bool)
MAX_DIMS = 8  # no model here has more; bounds the work a shape can ask for before the element count is known
MAX_NAME_IN_MESSAGE = 64  # characters of a client's tensor name repeated in an error message

_BRIEF = reprlib.Repr()  # a client's value in an error message: bounded in depth and length, whatever was sent
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxdict, _BRIEF.maxtuple, _BRIEF.maxset = 2, 4, 4, 4, 4
_BRIEF.maxstring = _BRIEF.maxlong = _BRIEF.maxother = 40


def brief(value: Any) -> str:
    """A short repr of a value from a request, for an error message.

    The builtin repr of JSON nested a thousand levels deep (orjson accepts 1024) raises RecursionError, and that
    of a 10 MB string is 10 MB: reprlib bounds both."""
    try:
        return _BRIEF.repr(value)
    except (RecursionError, ValueError):
        return f"a {type(value).__name__}"


def clip(name: str) -> str:
    """A client's tensor name as quoted in an error message: at most MAX_NAME_IN_MESSAGE characters."""
    return name if len(name) <= MAX_NAME_IN_MESSAGE else name[:MAX_NAME_IN_MESSAGE] + "..."


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


@dataclass
class RequestInput:
    """One decoded request tensor; `array` is None when its data could not be decoded (see problems)."""

    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None


@dataclass
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0  # top-k classes as "score:index:label" strings (Triton's classification extension)


@dataclass
class InferRequest:
    inputs: list[RequestInput]
    outputs: list[RequestedOutput] | None  # None: every output, with the request's default encoding
    binary_default: bool = False
    id: str | None = None
    problems: list[str] = field(default_factory=list)  # data problems found while decoding, reported with the rest


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= MAX_DIMS and all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in value)


def _check_parameters(where: str, params: Any, problems: list[str]) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict):
        problems.append(f"{where}.parameters: expected an object, got {type(params).__name__}")
        return {}
    for key, value in params.items():
        if not isinstance(value, PARAMETER_TYPES):
            problems.append(f"{where}.parameters.{clip(key)}: expected a string, number or boolean, "
                            f"got {type(value).__name__}")
    return params


def _array_from_json(where: str, data: Any, datatype: str, count: int) -> tuple[np.ndarray | None, str | None]:
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


def decode_infer_request(body: bytes, header_length: int | None = None,
                         max_elements: int = 1 << 24) -> InferRequest:
    """Decode a V2 infer body; `header_length` is Inference-Header-Content-Length when binary parts follow.

    Raises BadRequest listing every problem with the request's form. Problems with tensor data are kept
    in `InferRequest.problems` so that they are reported together with the model's own checks.
    """
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise BadRequest(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
        if header_length == 0:
            raise BadRequest("raw binary requests (Inference-Header-Content-Length: 0) are not supported; "
                             "send a JSON header that describes the inputs")
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    try:
        req = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        try:  # Python's parser also reads NaN and Infinity, so that the check below can name the input
            req = json.loads(header)
        except RecursionError:
            raise BadRequest("request body is not valid JSON: nested too deeply") from None
        except (UnicodeDecodeError, ValueError):
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise BadRequest(f"request body: expected a JSON object, got {type(req).__name__}")

    problems: list[str] = []
    data_problems: list[str] = []
    request_id = req.get("id")
    if request_id is not None and not isinstance(request_id, str):
        problems.append(f"id: expected a string, got {type(request_id).__name__}")
    params = _check_parameters("request", req.get("parameters"), problems)
    binary_default = params.get("binary_data_output") is True

    raw_inputs = req.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        problems.append(f"inputs: expected a non-empty list of tensors, got {brief(raw_inputs)}")
        raw_inputs = []
    inputs: list[RequestInput] = []
    offset = 0
    for i, tensor in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            problems.append(f"{where}: expected an object with name, shape, datatype and data")
            continue
        name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        if isinstance(name, str) and name:
            where = f"input '{clip(name)}'"
        else:
            problems.append(f"{where}.name: expected a non-empty string, got {brief(name)}")
        if not _is_shape(shape):
            problems.append(f"{where}.shape: expected a list of at most {MAX_DIMS} non-negative integers, "
                            f"got {brief(shape)}")
        if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
            problems.append(f"{where}.datatype: expected one of {sorted(NUMPY_DTYPES)}, got {brief(datatype)}")
        tparams = _check_parameters(where, tensor.get("parameters"), problems)
        size = tparams.get("binary_data_size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            problems.append(f"{where}.parameters.binary_data_size: expected a non-negative integer, got {brief(size)}")
            continue
        if size is not None and "data" in tensor:
            problems.append(f"{where}: has both 'data' and binary_data_size; send one of them")
            continue
        if size is None and "data" not in tensor:
            problems.append(f"{where}.data: required (or parameters.binary_data_size with binary data)")
            continue
        if size is not None:
            chunk = binary[offset:offset + size]
            offset += size
            if len(chunk) < size:
                problems.append(f"{where}.parameters.binary_data_size: {size} bytes declared, "
                                f"only {len(chunk)} left in the body")
                continue
        if not (isinstance(name, str) and _is_shape(shape) and isinstance(datatype, str) and datatype in NUMPY_DTYPES):
            continue
        count = math.prod(shape)
        if count > max_elements:
            problems.append(f"{where}.shape: {shape} holds {count} elements, more than the limit of {max_elements}")
            continue
        if max(shape, default=0) > max_elements:  # e.g. [0, 10**9, 10**9]: no elements, but numpy cannot shape it
            problems.append(f"{where}.shape: {shape} has a dimension over the limit of {max_elements} elements")
            continue
        if size is not None and datatype == "BYTES":
            try:
                array, problem = decode_bytes_elements(chunk, count, where), None
            except BadRequest as exc:
                array, problem = None, exc.message
        elif size is not None:
            dtype = NUMPY_DTYPES[datatype]
            if size != count * dtype.itemsize:
                array, problem = None, (f"{where}.parameters.binary_data_size: shape {shape} of {datatype} "
                                        f"needs {count * dtype.itemsize} bytes, got {size}")
            else:
                array, problem = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")), None
        else:
            array, problem = _array_from_json(where, tensor["data"], datatype, count)
        if problem:
            data_problems.append(problem)
        inputs.append(RequestInput(name, datatype, shape, None if array is None else array.reshape(shape)))
    if offset < len(binary):
        problems.append(f"body: {len(binary) - offset} bytes of binary data follow the inputs "
                        "that no binary_data_size accounts for")

    outputs = None
    raw_outputs = req.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            problems.append(f"outputs: expected a list, got {type(raw_outputs).__name__}")
        else:
            outputs = []
            seen = set()
            for i, out in enumerate(raw_outputs):
                if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                    problems.append(f"outputs[{i}]: expected an object with a string 'name'")
                    continue
                where = f"output '{clip(out['name'])}'"
                if out["name"] in seen:
                    problems.append(f"outputs[{i}]: {where} is requested more than once")
                    continue
                seen.add(out["name"])
                oparams = _check_parameters(where, out.get("parameters"), problems)
                top_k = oparams.get("classification", 0)
                if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
                    problems.append(f"{where}.parameters.classification: expected a positive "
                                    f"integer (top-k), got {brief(top_k)}")
                    continue
                binary_flag = oparams.get("binary_data", binary_default)
                outputs.append(RequestedOutput(out["name"], binary_flag is True, top_k))
    if problems:
        raise BadRequest("invalid inference request: " + join_problems(problems))
    return InferRequest(inputs, outputs, binary_default, request_id, data_problems)


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo the request's Content-Encoding header (None: absent), gzip or deflate (a zlib stream), refusing output
    over `limit` bytes (a zip bomb).

    An empty value is refused (415) like an unknown one: granian hands the app an empty string for a value with
    bytes outside visible ASCII, which is no content coding either, and must not pass for 'identity'."""
    if content_encoding is None:
        return body
    encoding = content_encoding.strip(" \t").lower()
    if not encoding:
        raise UnsupportedMediaType("Content-Encoding is empty or not ASCII; send gzip, deflate or identity")
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding '{encoding[:32]}' is not supported; "
                                   "send gzip, deflate or identity")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"request body is not valid {encoding} data ({exc})") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"request body decompresses to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise BadRequest(f"request body is truncated {encoding} data")
    if inflater.unused_data:  # silently dropping what follows would answer a request the client did not send
        raise BadRequest(f"request body has {len(inflater.unused_data)} bytes after the end of its {encoding} "
                         "data (one stream expected)")
    return data


def compress(body: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
    """Compress a response as the client's Accept-Encoding asks (gzip or deflate), else leave it as is."""
    accepted = {part.split(";")[0].strip().lower() for part in accept_encoding.split(",")
                if not part.replace(" ", "").lower().endswith(("q=0", "q=0.0", "q=0.00", "q=0.000"))}
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=1), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 1), "deflate"
    return body, None


def classify(array: np.ndarray, k: int, labels: list[str] | None) -> np.ndarray:
    """Top-k entries of each row as "score:index[:label]" strings, [B, k] (Triton's classification extension).

    A binary classifier's single probability p of class 1 is scored as the two classes [1 - p, p]."""
    rows = array.reshape(len(array), -1).astype(np.float64, copy=False)  # unsigned scores would wrap when negated
    if rows.shape[1] == 1 and labels is not None and len(labels) == 2:
        rows = np.concatenate([1 - rows, rows], axis=1)
    k = min(k, rows.shape[1])
    top = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.empty((len(rows), k), dtype=object)
    for i, row in enumerate(top):
        for j, index in enumerate(row):
            label = f":{labels[index]}" if labels and index < len(labels) else ""
            out[i, j] = f"{rows[i, index]:g}:{index}{label}"
    return out


def dumps(payload) -> bytes:
    """JSON bytes by orjson (numpy arrays included); Python's encoder for what orjson refuses, such as a string
    with a lone surrogate that a request smuggled in as a JSON escape (orjson has no \\u escape for it)."""
    try:
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:
        return json.dumps(payload, separators=(",", ":"), default=lambda a: a.tolist()).encode()


def dumps_nonfinite(payload) -> bytes:
    """JSON bytes with NaN, Infinity and -Infinity written as those bare literals, as Python's json module, JavaScript's
    JSON5 and Triton's own JSON writer do (strict JSON has no way to say them; orjson would write null)."""
    return json.dumps(payload, separators=(",", ":"), default=lambda a: a.tolist()).encode()


def encode_infer_response(model_name: str, model_version: str, request_id: str | None,
                          results: list[tuple[str, str, np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """Encode outputs given as (name, datatype, array, binary); return (body, header length or None)."""
    outputs, chunks = [], []
    nonfinite = False
    for name, datatype, array, binary in results:
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary and datatype == "BYTES":  # each element: 4-byte little-endian length, then the bytes
            chunk = encode_bytes_elements(array)
            out["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        elif binary:
            chunk = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            out["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        elif array.dtype.kind == "f" and not np.isfinite(array).all():
            nonfinite = True  # JSON has no NaN or Infinity: written as those literals (see dumps_nonfinite)
            out["data"] = array.reshape(-1).tolist()
        else:
            # orjson writes numeric arrays itself (float32 as its shortest round-trip form); strings via lists
            out["data"] = array.reshape(-1).tolist() if array.dtype.kind == "O" else array.reshape(-1)
        outputs.append(out)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = outputs
    header = dumps_nonfinite(response) if nonfinite else dumps(response)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
