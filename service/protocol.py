"""Open Inference Protocol (V2) request decoding and response encoding, JSON and Triton binary tensors.

Transport-free: takes and returns bytes and plain objects, so the HTTP layer stays thin. Checks against a
particular model (names, shapes, datatypes) live in service/checks.py; this module checks only the protocol's form.
Tensor data is read by service/tensordata.py.
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.errors import BadRequest, join_problems
from service.tensordata import MAX_DIMS, NUMPY_DTYPES, array_from_json, decode_bytes_elements, encode_bytes_elements

HEADER_LENGTH = "Inference-Header-Content-Length"
PARAMETER_TYPES = (str, int, float, bool)
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
    parameters: dict = field(default_factory=dict)  # the request's parameters (sequence_id, sequence_start, ...)


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



@dataclass(slots=True)
class _InputForm:
    """A request input whose name, shape and datatype were read (valid: all three are usable)."""

    where: str
    name: Any
    shape: Any
    datatype: Any
    binary_size: int | None
    valid: bool


def decode_infer_request(body: bytes, header_length: int | None = None,
                         max_elements: int = 1 << 24) -> InferRequest:
    """Decode a V2 infer body; `header_length` is Inference-Header-Content-Length when binary parts follow.

    Raises BadRequest listing every problem with the request's form. Problems with tensor data are kept
    in `InferRequest.problems` so that they are reported together with the model's own checks.
    """
    header, binary = _split_body(body, header_length)
    req = _parse_header(header)
    problems: list[str] = []
    data_problems: list[str] = []
    request_id = req.get("id")
    if request_id is not None and not isinstance(request_id, str):
        problems.append(f"id: expected a string, got {type(request_id).__name__}")
    params = _check_parameters("request", req.get("parameters"), problems)
    binary_default = params.get("binary_data_output") is True
    inputs = _decode_inputs(req.get("inputs"), binary, max_elements, problems, data_problems)
    outputs = _decode_outputs(req.get("outputs"), binary_default, problems)
    if problems:
        raise BadRequest("invalid inference request: " + join_problems(problems))
    return InferRequest(inputs, outputs, binary_default, request_id, data_problems, params)


def _split_body(body: bytes, header_length: int | None) -> tuple[bytes, memoryview]:
    """(the JSON header, the binary data after it)."""
    if header_length is None:
        return body, memoryview(b"")
    if header_length < 0 or header_length > len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
    if header_length == 0:
        raise BadRequest("raw binary requests (Inference-Header-Content-Length: 0) are not supported; "
                         "send a JSON header that describes the inputs")
    return body[:header_length], memoryview(body)[header_length:]


def _parse_header(header: bytes) -> dict:
    """The JSON header as an object; BadRequest when it is not valid JSON or not an object."""
    try:
        req = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        try:  # Python's parser also reads NaN and Infinity, so that the model's checks can name the input
            req = json.loads(header)
        except RecursionError:
            raise BadRequest("request body is not valid JSON: nested too deeply") from None
        except (UnicodeDecodeError, ValueError):
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise BadRequest(f"request body: expected a JSON object, got {type(req).__name__}")
    return req


def _decode_inputs(raw_inputs: Any, binary: memoryview, max_elements: int, problems: list[str],
                   data_problems: list[str]) -> list[RequestInput]:
    """The request's inputs, taking each one's binary data from `binary` in order."""
    if not isinstance(raw_inputs, list) or not raw_inputs:
        problems.append(f"inputs: expected a non-empty list of tensors, got {brief(raw_inputs)}")
        raw_inputs = []
    inputs: list[RequestInput] = []
    offset = 0
    for i, tensor in enumerate(raw_inputs):
        form = _input_form(i, tensor, problems)
        if form is None:
            continue
        chunk = None
        if form.binary_size is not None:
            size = form.binary_size
            chunk = binary[offset:offset + size]
            offset += size
            if len(chunk) < size:
                problems.append(f"{form.where}.parameters.binary_data_size: {size} bytes declared, "
                                f"only {len(chunk)} left in the body")
                continue
        if form.valid:
            decoded = _input_data(form, tensor, chunk, max_elements, problems, data_problems)
            if decoded is not None:
                inputs.append(decoded)
    if offset < len(binary):
        problems.append(f"body: {len(binary) - offset} bytes of binary data follow the inputs "
                        "that no binary_data_size accounts for")
    return inputs


def _input_form(i: int, tensor: Any, problems: list[str]) -> _InputForm | None:
    """Check one input's name, shape, datatype and where its data is; None when it has no data to read."""
    where = f"inputs[{i}]"
    if not isinstance(tensor, dict):
        problems.append(f"{where}: expected an object with name, shape, datatype and data")
        return None
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if isinstance(name, str) and name:
        where = f"input '{clip(name)}'"
    else:
        problems.append(f"{where}.name: expected a non-empty string, got {brief(name)}")
    shape_ok = _is_shape(shape)
    if not shape_ok:
        problems.append(f"{where}.shape: expected a list of at most {MAX_DIMS} non-negative integers, "
                        f"got {brief(shape)}")
    datatype_ok = isinstance(datatype, str) and datatype in NUMPY_DTYPES
    if not datatype_ok:
        problems.append(f"{where}.datatype: expected one of {sorted(NUMPY_DTYPES)}, got {brief(datatype)}")
    size = _check_parameters(where, tensor.get("parameters"), problems).get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        problems.append(f"{where}.parameters.binary_data_size: expected a non-negative integer, got {brief(size)}")
        return None
    if size is not None and "data" in tensor:
        problems.append(f"{where}: has both 'data' and binary_data_size; send one of them")
        return None
    if size is None and "data" not in tensor:
        problems.append(f"{where}.data: required (or parameters.binary_data_size with binary data)")
        return None
    return _InputForm(where, name, shape, datatype, size, isinstance(name, str) and shape_ok and datatype_ok)


def _input_data(form: _InputForm, tensor: dict, chunk: memoryview | None, max_elements: int, problems: list[str],
                data_problems: list[str]) -> RequestInput | None:
    """The input with its data decoded (None as the array when the data has a problem); None over the limits."""
    where, shape, datatype = form.where, form.shape, form.datatype
    count = math.prod(shape)
    if count > max_elements:
        problems.append(f"{where}.shape: {shape} holds {count} elements, more than the limit of {max_elements}")
        return None
    if max(shape, default=0) > max_elements:  # e.g. [0, 10**9, 10**9]: no elements, but numpy cannot shape it
        problems.append(f"{where}.shape: {shape} has a dimension over the limit of {max_elements} elements")
        return None
    if chunk is not None and datatype == "BYTES":
        try:
            array, problem = decode_bytes_elements(chunk, count, where), None
        except BadRequest as exc:
            array, problem = None, exc.message
    elif chunk is not None:
        dtype = NUMPY_DTYPES[datatype]
        if form.binary_size != count * dtype.itemsize:
            array, problem = None, (f"{where}.parameters.binary_data_size: shape {shape} of {datatype} "
                                    f"needs {count * dtype.itemsize} bytes, got {form.binary_size}")
        else:
            array, problem = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")), None
    else:
        array, problem = array_from_json(where, tensor["data"], datatype, count)
    if problem:
        data_problems.append(problem)
    return RequestInput(form.name, datatype, shape, None if array is None else array.reshape(shape))


def _decode_outputs(raw_outputs: Any, binary_default: bool, problems: list[str]) -> list[RequestedOutput] | None:
    """The outputs asked for (None: every output), each with its encoding and classification count."""
    if raw_outputs is None:
        return None
    if not isinstance(raw_outputs, list):
        problems.append(f"outputs: expected a list, got {type(raw_outputs).__name__}")
        return None
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
    return outputs


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
