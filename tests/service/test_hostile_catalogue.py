"""A catalogue of hostile requests, each sent as raw bytes to the real server on 127.0.0.1 (shipped models/).

Every case must be answered with its 4xx and a JSON body `{"error": "..."}` naming the field and the problem (or,
for what the protocol says to ignore, a 200 with the right answer); after every case the server must still be
ready and still answer a normal digits-mlp inference exactly as before. The last tests check, over everything
the catalogue sent, that no error response carries a stack trace or a filesystem path, that the server logged no
traceback, and that its worker is the one it started with (none crashed and was respawned).

The same server's gRPC port gets its own cases (GRPC_CASES): malformed protobuf, raw contents that do not match
the shape, more raw contents than inputs, a 2 GiB declared size, unknown datatypes and the like, each sent as
bytes to ModelInfer and to a ModelStreamInfer stream. Each gets its status code and a message naming the field,
never a stack trace or a path, and the server answers HTTP and gRPC as before.

Hostile inputs covered elsewhere, not repeated here: test_server.py (BAD_REQUESTS: wrong shape, datatype and
element count, an unknown datatype, strings for numbers, NaN as a JSON token, unknown input, output, model and
version, batch too large; invalid JSON; a body and a Content-Length over the limit; an Inference-Header-Content-
Length of 100 on a 2-byte body), test_protocol_features.py (a 3 MB gzip body over a 2 MB limit, a body that is
not gzip, a truncated gzip stream, an unsupported Content-Encoding), test_hostile_inputs.py (a body shorter than
its Content-Length, GAN class indices and seed through /v1) and test_security.py (the repository token, paths).

Protocol choices this file pins down:
- A JSON true/false among the numbers of a numeric tensor is refused (400 naming the input): V2 has a BOOL
  datatype for booleans, and numpy would silently have read [true, 0] as [1, 0].
- The request `id` is echoed as sent, like Triton; a huge one is bounded only by the body limit (16 MiB by
  default), so a 10 MB id comes back in a 200, never a 500.
- Unknown keys and parameters, at the top level, per input and per output, are ignored (the V2 protocol's
  parameters are extensible): 200 with the same answer as without them.
- Model names that cannot be a folder of the repository ('..', '.hidden', NUL, a backslash, 10,000 characters)
  get 404 "unknown model", as any unknown model does; a %2F inside a name makes another path, which matches no
  route: 404 "no such endpoint". Versions that are not positive integers without leading zeros get 400.
- Raw NUL or invalid UTF-8 bytes in the request line (not percent-encoded) are refused by the HTTP server itself
  (granian's parser answers an empty 400 before the app sees the request), so only their percent-encoded forms
  are in the catalogue.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import site
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import ROOT, SHIPPED_MODELS, free_port, send, start_server, worker_pids

TOKEN = "catalogue-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MLP = "/v2/models/digits-mlp/infer"
GAN = "/v2/models/digits-gan/infer"
PIXELS = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
          0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]


def tensor(shape, data, datatype="FP32", name="input", **extra) -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data, **extra}


def good_input(**changes) -> dict:
    """The digits-mlp input of one sample, with `changes` to its keys (or extra keys)."""
    return {**tensor([1, 64], PIXELS), **changes}


GOOD = object()


def body(inputs=GOOD, **top) -> bytes:
    """A JSON infer body: `inputs` (default: one good digits-mlp input) and other top-level keys."""
    return json.dumps({"inputs": [good_input()] if inputs is GOOD else inputs, **top}).encode()


def without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def deep(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


DEEP = deep(1000)  # within orjson's depth limit of 1024 with the object and list around it: parsed, then checked


def with_field(field_name: str, raw: bytes, inside_tensor: bool = True) -> bytes:
    """A digits-mlp body whose `field_name` (in the tensor, or at the top level) is the raw JSON `raw`."""
    if inside_tensor:
        others = b",".join(b'"%s":%s' % (k.encode(), json.dumps(v).encode())
                           for k, v in good_input().items() if k != field_name)
        return b'{"inputs":[{%s,"%s":%s}]}' % (others, field_name.encode(), raw)
    return b'{"inputs":[%s],"%s":%s}' % (json.dumps(good_input()).encode(), field_name.encode(), raw)


def binary(header: dict, data: bytes, header_length: int | None = None) -> tuple[bytes, dict]:
    """A Triton binary-tensor body: the JSON header, then `data`; and its Inference-Header-Content-Length."""
    text = json.dumps(header).encode()
    return text + data, {"Inference-Header-Content-Length": str(len(text) if header_length is None else header_length)}


def binary_input(nbytes_declared: int, shape=(1, 64), datatype="FP32", name="input") -> dict:
    return {"name": name, "shape": list(shape), "datatype": datatype, "parameters": {"binary_data_size": nbytes_declared}}


FP32_ROW = np.asarray(PIXELS, np.float32).tobytes()  # 256 bytes
NAN_ROW = np.asarray([np.nan] + PIXELS[1:], np.float32).tobytes()
INF_ROW = np.asarray(PIXELS[:63] + [np.inf], np.float32).tobytes()


def zeros_bomb(encoding: str, size: int = 1 << 30) -> bytes:
    """`size` zero bytes compressed by gzip or deflate (zlib): about 1 MB for 1 GB, built in a fraction of a second.

    After a full flush the compressor starts afresh, so every further megabyte of zeros compresses to the same
    bytes: one block is repeated and the trailer's checksum and length are those of the whole gigabyte."""
    chunk = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    head = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    assert block == comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    end = comp.flush(zlib.Z_FINISH)
    count = size // len(chunk)
    if encoding == "gzip":
        crc = 0
        for _ in range(count):
            crc = zlib.crc32(chunk, crc)
        end = end[:-8] + struct.pack("<II", crc, size & 0xFFFFFFFF)
    else:
        adler = 1
        for _ in range(count):
            adler = zlib.adler32(chunk, adler)
        end = end[:-4] + struct.pack(">I", adler)
    return head + block * (count - 1) + end


@dataclass
class Case:
    id: str
    body: bytes
    status: int
    fragments: tuple[str, ...] = ()
    path: str = MLP
    method: str = "POST"
    headers: dict = field(default_factory=dict)
    check: Callable[[dict, bytes], None] | None = None  # for a 200: checks (headers, body) beyond the status


CASES: list[Case] = []


def case(id, body, status, *fragments, **kw) -> None:
    CASES.append(Case(id, body, status, fragments, **kw))


def binary_case(id, header: dict, data: bytes, status, *fragments, **kw) -> None:
    payload, headers = binary(header, data)
    case(id, payload, status, *fragments, headers=headers, **kw)


# -- JSON that cannot be parsed, or is nested beyond reason --------------------------------------------------------
case("truncated JSON", body()[:40], 400, "request body is not valid JSON")
case("empty body", b"", 400, "request body is not valid JSON")
case("100,000 unclosed [", b"[" * 100_000, 400, "request body is not valid JSON")
case("100,000 nested lists", deep(100_000), 400, "request body is not valid JSON")
case("100,000 nested objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400, "request body is not valid JSON")
case("deep and NaN (Python's parser)", b'{"inputs":' + deep(100_000, b"NaN") + b"}", 400,
     "request body is not valid JSON", "nested too deeply")
case("JSON null", b"null", 400, "request body: expected a JSON object, got NoneType")
case("invalid UTF-8 in a string", body()[:-1] + b',"id":"\xff\xfe"}', 400, "request body is not valid JSON")
case("deep inputs", b'{"inputs":{"a":' + DEEP + b"}}", 400, "inputs: expected a non-empty list of tensors")
case("deep input", b'{"inputs":' + deep(1020) + b"}", 400, "inputs[0]: expected an object")
case("deep name", with_field("name", DEEP), 400, "inputs[0].name: expected a non-empty string")
case("deep shape", with_field("shape", DEEP), 400, "input 'input'.shape: expected a list of at most 8")
case("deep datatype", with_field("datatype", DEEP), 400, "input 'input'.datatype: expected one of")
case("deep data", with_field("data", DEEP), 400, "input 'input'.data: nested", "levels deep",
     "at most 8 dimensions")
case("deep tensor parameters", with_field("parameters", b'{"binary_data_size":' + DEEP + b"}"), 400,
     "input 'input'.parameters.binary_data_size: expected a non-negative integer")
case("deep id", with_field("id", DEEP, inside_tensor=False), 400, "id: expected a string, got list")
case("deep request parameters", with_field("parameters", b'{"x":' + DEEP + b"}", inside_tensor=False), 400,
     "request.parameters.x: expected a string, number or boolean, got list")
case("deep outputs", with_field("outputs", b'[{"name":"probabilities","parameters":{"classification":'
                                + DEEP + b"}}]", inside_tensor=False), 400,
     "output 'probabilities'.parameters.classification: expected a positive integer")

# -- wrong types in every field ------------------------------------------------------------------------------------
for value in ({}, "input", None, 5, []):
    case(f"inputs={value!r}", body(value), 400, "inputs: expected a non-empty list of tensors")
case("inputs=[5]", body([5]), 400, "inputs[0]: expected an object with name, shape, datatype and data")
for value in (5, [], {}, True):
    case(f"id={value!r}", body(id=value), 400, f"id: expected a string, got {type(value).__name__}")
for value in ([], "x", 5):
    case(f"parameters={value!r}", body(parameters=value), 400,
         f"request.parameters: expected an object, got {type(value).__name__}")
case("parameters value an object", body(parameters={"x": {"y": 1}}), 400,
     "request.parameters.x: expected a string, number or boolean, got dict")
for value in ({}, "probabilities", 5):
    case(f"outputs={value!r}", body(outputs=value), 400, f"outputs: expected a list, got {type(value).__name__}")
for value in (["probabilities"], [{"name": 5}], [{}]):
    case(f"outputs={value!r}", body(outputs=value), 400, "outputs[0]: expected an object with a string 'name'")
case("output parameters a list", body(outputs=[{"name": "probabilities", "parameters": []}]), 400,
     "output 'probabilities'.parameters: expected an object, got list")
for value in ("3", True, 1.5, -1):
    case(f"classification={value!r}", body(outputs=[{"name": "probabilities", "parameters": {"classification": value}}]),
         400, "output 'probabilities'.parameters.classification: expected a positive integer (top-k)")
case("an output asked for twice", body(outputs=[{"name": "probabilities"}, {"name": "probabilities"}]), 400,
     "outputs[1]: output 'probabilities' is requested more than once")
for value in (5, None, "", []):
    case(f"name={value!r}", body([good_input(name=value)]), 400, "inputs[0].name: expected a non-empty string")
case("a 1 MB input name", body([good_input(name="x" * 1_000_000)]), 400, "unexpected input '" + "x" * 64 + "...'")
case("lone surrogate in the name", body().replace(b'"name": "input"', b'"name": "\\ud800"'), 400, "unexpected input")
for value in ("1,64", None, {}, [1.0, 64], [True, 64], ["1", 64], [-1, 64], [1, -64], 64):
    case(f"shape={value!r}", body([good_input(shape=value)]), 400,
         "input 'input'.shape: expected a list of at most 8 non-negative integers")
for value in (5, ["FP32"], "fp32", "FLOAT32", "STRING", None):
    case(f"datatype={value!r}", body([good_input(datatype=value)]), 400, "input 'input'.datatype: expected one of")
case("datatype BYTES for an FP32 input", body([good_input(datatype="BYTES")]), 400,
     "input 'input': expected datatype FP32, got BYTES")
for value in ("abc", {"a": 1}, 5, None, True):
    case(f"data={value!r}", body([good_input(data=value)]), 400,
         f"input 'input'.data: expected a list of numbers, got {type(value).__name__}")
case("data of objects", body([good_input(data=[{"a": 1}] * 64)]), 400,
     "input 'input'.data: expected FP32 values, got non-numbers")
case("data of nulls", body([good_input(data=[None] * 64)]), 400, "input 'input'.data: expected FP32 values, got non-numbers")
case("ragged data", body([good_input(data=[PIXELS[:32], PIXELS[32:63]])]), 400,
     "input 'input'.data: nested lists must be regular")
case("no data", body([without(good_input(), "data")]), 400, "input 'input'.data: required")
case("no name, shape or datatype", body([{"data": PIXELS}]), 400, "inputs[0].name: expected a non-empty string",
     "inputs[0].shape", "inputs[0].datatype")
for value in ([], "x"):
    case(f"tensor parameters={value!r}", body([good_input(parameters=value)]), 400,
         f"input 'input'.parameters: expected an object, got {type(value).__name__}")
for value in ("256", -1, 1.5, True):
    case(f"binary_data_size={value!r}", body([binary_input(value)]), 400,
         "input 'input'.parameters.binary_data_size: expected a non-negative integer")
case("data and binary_data_size", body([good_input(parameters={"binary_data_size": 256})]), 400,
     "input 'input': has both 'data' and binary_data_size")
case("an input given twice", body([good_input(), good_input()]), 400, "input 'input' is given more than once")
case("20,000 bad tensors", body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}] * 20_000), 400,
     "unexpected input 'x'", "and 19981 more problems")

# -- negative or enormous dims -------------------------------------------------------------------------------------
case("shape [1000000000, 64], 64 values", body([good_input(shape=[1_000_000_000, 64])]), 400,
     "input 'input'.shape: [1000000000, 64] holds 64000000000 elements, more than the limit of")
case("shape [1000000000, 1000000000]", body([good_input(shape=[10**9, 10**9])]), 400, "more than the limit of")
case("shape [2**40, 64]", body([good_input(shape=[2**40, 64])]), 400, "at most 8 non-negative integers")
case("shape [0, 10**30]", body([tensor([0, 10**30], [])]), 400, "at most 8 non-negative integers")
case("9 dimensions", body([tensor([1] * 9, [0.0])]), 400, "at most 8 non-negative integers")
case("300000 x 64, one value", body([tensor([300000, 64], [0.0])]), 400, "more than the limit")
case("4096 x 64, 64 values", body([good_input(shape=[4096, 64])]), 400, "needs 262144 elements, got 64")
case("a zero dim", body([tensor([0, 64], [])]), 400, "every dimension must be at least 1")
case("a zero dim beside enormous ones (found by schemathesis: numpy cannot shape it)",
     body([tensor([1, 56171238, 345, 1305142, 0, 3490], [], "UINT32")]), 400,
     "has a dimension over the limit of")
# These crashed a worker (SIGABRT in ONNX Runtime) or passed a sequence past the model's limit (found by review):
case("GRU, zero steps", body([tensor([1, 0], [])]), 400, "every dimension must be at least 1",
     path="/v2/models/sunspots-gru/infer")
case("Transformer, zero steps", body([tensor([1, 0, 8], [])]), 400, "every dimension must be at least 1",
     path="/v2/models/digits-transformer/infer")
case("Transformer, 600 steps", body([tensor([1, 600, 8], [0.0] * 4800)]), 400,
     "sequence length 600 exceeds the maximum of 512", path="/v2/models/digits-transformer/infer")
case("LSTM, 5000 steps", body([tensor([1, 5000], [350.0] * 5000)]), 400,
     "sequence length 5000 exceeds the maximum of 4096", path="/v2/models/co2-lstm/infer")
case("GAN, class 99", body([tensor([1, 32], [0.0] * 32, name="latent"), tensor([1], [99], "INT64", "label")]), 400,
     "class indices must be in 0..9", path=GAN)

# -- NaN and Inf ---------------------------------------------------------------------------------------------------
for token in (b"Infinity", b"-Infinity", b"1e400"):
    case(f"JSON {token.decode()}", body().replace(b"[0, 0, 5", b"[%s, 0, 5" % token, 1), 400,
         "input 'input': values must be finite", "at flat index 0")
binary_case("binary FP32 NaN", {"inputs": [binary_input(256)]}, NAN_ROW, 400,
            "input 'input': values must be finite, found nan at flat index 0")
binary_case("binary FP32 Inf", {"inputs": [binary_input(256)]}, INF_ROW, 400,
            "input 'input': values must be finite, found inf at flat index 63")
def non_finite_as_literal(headers: dict, data: bytes) -> None:
    """The request was valid: the model's NaN or Infinity is answered, written as the literal Python's json reads."""
    value = json.loads(data)["outputs"][0]["data"][0]
    assert not math.isfinite(value) and re.search(rb'"data":\[(NaN|-?Infinity)\]', data), data[:300]


case("finite inputs, infinite outputs", body([tensor([1, 10], [3e38] * 10)]), 200,
     path="/v2/models/diabetes-mlp/infer", check=non_finite_as_literal)

# -- strings and booleans where numbers belong ---------------------------------------------------------------------
case("a string among numbers", body([good_input(data=["1"] + PIXELS[1:])]), 400,
     "input 'input'.data: expected FP32 values, got strings")
case("[true, 0, ...] as FP32", body([good_input(data=[True] + PIXELS[1:])]), 400,
     "input 'input'.data: expected FP32 values, got booleans")
case("[1.5, false, ...] as FP32", body([good_input(data=[1.5, False] + PIXELS[2:])]), 400,
     "input 'input'.data: expected FP32 values, got booleans")
case("nested [[..., true]] as FP32", body([good_input(data=[PIXELS[:63] + [True]])]), 400,
     "input 'input'.data: expected FP32 values, got booleans")
case("all booleans as FP32", body([good_input(data=[True] * 64)]), 400,
     "input 'input'.data: expected FP32 values, got booleans")
case("[true, 0] as INT64", body([tensor([2, 32], [0.0] * 64, name="latent"), tensor([2], [True, 0], "INT64", "label")]),
     400, "input 'label'.data: expected INT64 values, got booleans", path=GAN)
case("numbers as BOOL", body([good_input(datatype="BOOL", data=[1, 0] * 32)]), 400,
     "input 'input'.data: expected BOOL values, got integers")
case("/v1: a boolean among the pixels", json.dumps({"instances": [[True] + PIXELS[1:]]}).encode(), 400,
     "input 'input': expected FP32 values", path="/v1/models/digits-mlp:predict")

# -- binary tensors: header and sizes ------------------------------------------------------------------------------
_header = {"inputs": [binary_input(256)]}
_payload = binary(_header, FP32_ROW)[0]
case("header longer than the body by 1", _payload, 400,
     "Inference-Header-Content-Length is", "but the body has",
     headers={"Inference-Header-Content-Length": str(len(_payload) + 1)})
case("header length 0", _payload, 400, "raw binary requests",
     headers={"Inference-Header-Content-Length": "0"})
case("header length cutting the JSON", _payload, 400, "request body is not valid JSON",
     headers={"Inference-Header-Content-Length": "20"})
for value in ("1" * 5000, "-1", "12a", "0x10", "1e3"):
    case(f"header length {value[:8]!r}", body(), 400, "Inference-Header-Content-Length: expected a non-negative integer",
         headers={"Inference-Header-Content-Length": value})
binary_case("binary_data_size bigger than the bytes", {"inputs": [binary_input(1000)]}, FP32_ROW, 400,
            "input 'input'.parameters.binary_data_size: 1000 bytes declared, only 256 left in the body")
binary_case("binary_data_size smaller than the bytes", {"inputs": [binary_input(128)]}, FP32_ROW, 400,
            "body: 128 bytes of binary data follow the inputs that no binary_data_size accounts for")
binary_case("binary_data_size wrong for the shape", {"inputs": [binary_input(252)]}, FP32_ROW[:252], 400,
            "input 'input'.parameters.binary_data_size: shape [1, 64] of FP32 needs 256 bytes, got 252")
_gan = {"inputs": [binary_input(128, (1, 32), name="latent"), binary_input(8, (1,), "INT64", "label")]}
binary_case("two inputs, sizes add up to more than sent", _gan, bytes(130), 400,
            "input 'label'.parameters.binary_data_size: 8 bytes declared, only 2 left in the body", path=GAN)
binary_case("two inputs, sizes add up to less than sent", _gan, bytes(140), 400,
            "body: 4 bytes of binary data follow the inputs", path=GAN)
binary_case("binary bytes with no binary_data_size", {"inputs": [good_input()]}, FP32_ROW, 400,
            "body: 256 bytes of binary data follow the inputs")

# -- compression ---------------------------------------------------------------------------------------------------
case("gzip bomb, 1 GB of zeros", zeros_bomb("gzip"), 413, "request body decompresses to more than the limit of",
     headers={"Content-Encoding": "gzip"})
case("deflate bomb, 1 GB of zeros", zeros_bomb("deflate"), 413, "request body decompresses to more than the limit of",
     headers={"Content-Encoding": "deflate"})
case("truncated deflate", zlib.compress(body())[:-6], 400, "request body is truncated deflate data",
     headers={"Content-Encoding": "deflate"})
case("gzip, then garbage", gzip.compress(body()) + b"garbage", 400,
     "request body has 7 bytes after the end of its gzip data", headers={"Content-Encoding": "gzip"})
case("empty gzip body", b"", 400, "request body is truncated gzip data", headers={"Content-Encoding": "gzip"})
case("gzip of 100,000 nested lists", gzip.compress(deep(100_000)), 400, "request body is not valid JSON",
     headers={"Content-Encoding": "gzip"})
case("gzip of booleans as FP32", gzip.compress(body([good_input(data=[True] * 64)])), 400,
     "expected FP32 values, got booleans", headers={"Content-Encoding": "gzip"})

# -- model names and versions in the path --------------------------------------------------------------------------
NAMES = {  # path segment -> what the answer says
    "..": "unknown model: '..'", "%2e%2e": "unknown model: '..'", ".hidden": "unknown model: '.hidden'",
    "a%00b": "unknown model: 'a\x00b'", "%00": "unknown model: '\x00'", "digits-mlp%00": "unknown model: 'digits-mlp\x00'",
    "a%5Cb": "unknown model: 'a\\b'", "x" * 10_000: "unknown model: '" + "x" * 128 + "'",
    "d%C3%A9": "unknown model: 'dé'",  # percent-encoded UTF-8 is decoded as such
    "..%2F..%2Fetc": "no such endpoint", "a%2Fb": "no such endpoint", "%2F": "no such endpoint",
    "%2e%2e%2fdigits-mlp": "no such endpoint", "%2Fetc%2Fpasswd": "no such endpoint",
    "digits-mlp%2F..%2Fdigits-mlp": "no such endpoint",
}
ENDPOINTS = [("POST", "/v2/models/{}/infer", {}), ("GET", "/v2/models/{}", {}), ("GET", "/v2/models/{}/ready", {}),
             ("POST", "/v2/repository/models/{}/load", AUTH), ("POST", "/v2/repository/models/{}/unload", AUTH)]
for segment, fragment in NAMES.items():
    for method, template, headers in ENDPOINTS:
        case(f"name {segment[:24]} {method} {template.split('{}')[-1] or 'metadata'}", body() if "infer" in template else b"",
             404, fragment, method=method, path=template.format(segment), headers=headers)
for version in ("-1", "0", "01", "abc", "1.0", "99999999999", "%00", "1%20"):
    for method, suffix in (("POST", "/infer"), ("GET", ""), ("GET", "/ready")):
        case(f"version {version} {method} {suffix or 'metadata'}", body() if suffix else b"", 400,
             "model version must be a positive integer", method=method,
             path=f"/v2/models/digits-mlp/versions/{version}{suffix}")
case("version 1%2F..%2F2", body(), 404, "no such endpoint", path="/v2/models/digits-mlp/versions/1%2F..%2F2/infer")
case("version 7 (absent)", body(), 404, "Request for unknown model: 'digits-mlp' version 7 is not found", path="/v2/models/digits-mlp/versions/7/infer")

# -- other endpoints' bodies ---------------------------------------------------------------------------------------
case("/v1: 100,000 nested lists", deep(100_000), 400, "request body is not valid JSON", path="/v1/models/digits-mlp:predict")
case("/v1: deep seed", b'{"instances":[{"label":3}],"seed":' + deep(900) + b"}", 400,
     "seed: expected a non-negative integer", path="/v1/models/digits-gan:predict")
case("index: deep ready", b'{"ready":' + deep(900) + b"}", 400, "ready: expected a boolean",
     path="/v2/repository/index", headers=AUTH)
case("index: 100,000 nested lists", deep(100_000), 400, "request body is not valid JSON",
     path="/v2/repository/index", headers=AUTH)


# -- what the protocol says to ignore, and the id: 200 with the right answer ---------------------------------------
def same_answer(headers, data):
    assert headers["content-type"] == "application/json"
    answer = json.loads(data)
    assert answer["model_name"] == "digits-mlp" and answer["outputs"][0]["shape"] == [1, 10]
    # as float32: a response that Python's encoder writes (a lone surrogate in the id) has float64 digits
    np.testing.assert_array_equal(np.float32(answer["outputs"][0]["data"]), np.float32(BASELINE["data"]))


def echoes(value):
    def check(headers, data):
        same_answer(headers, data)
        assert json.loads(data)["id"] == value

    return check


def binary_same_answer(headers, data):
    header_length = int(headers["inference-header-content-length"])
    assert headers["content-type"] == "application/octet-stream"
    got = np.frombuffer(data[header_length:], np.float32)
    np.testing.assert_allclose(got, BASELINE["data"], rtol=1e-6)


HUGE_ID = "i" * 10_000_000
case("unknown top-level parameters", body(parameters={"priority": "high", "x-unknown": 3, "flag": False}), 200,
     check=same_answer)
case("unknown input parameters", body([good_input(parameters={"foo": "bar", "shared_memory_region": 1.5})]), 200,
     check=same_answer)
case("unknown output parameters", body(outputs=[{"name": "probabilities", "parameters": {"foo": 1, "bar": "x"}}]),
     200, check=same_answer)
case("unknown top-level keys", body(extra={"deep": [[1, 2], {"x": None}]}, model_name="other", sequence=[1]), 200,
     check=same_answer)
case("unknown tensor keys", body([good_input(extra=[1, 2, 3], description="pixels")]), 200, check=same_answer)
case("binary_data_output true, numeric data", body(parameters={"binary_data_output": True}), 200,
     check=binary_same_answer)  # a `true` in the request must not make its numbers look like booleans
case("a 10 MB id is echoed", body(id=HUGE_ID), 200, check=echoes(HUGE_ID))
case("a lone surrogate in the id is echoed", body()[:-1] + b', "id": "\\ud800"}', 200, check=echoes("\ud800"))

BASELINE: dict = {}
ERROR_RESPONSES: dict[str, tuple[int, dict, bytes]] = {}  # case id -> (status, headers, body) of every 4xx


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    grpc_port = free_port()
    srv = start_server(SHIPPED_MODELS, tmp_path_factory.mktemp("catalogue"), "--workers", "1",
                       "--grpc-port", str(grpc_port), env={"NNSERVE_REPOSITORY_TOKEN": TOKEN})
    srv.grpc_url = f"127.0.0.1:{grpc_port}"
    try:
        status, _, data = send(srv.port, "POST", MLP, body())
        assert status == 200
        BASELINE["data"] = json.loads(data)["outputs"][0]["data"]
        srv.workers = worker_pids(srv.process.pid)
        assert len(srv.workers) == 1
        yield srv
    finally:
        srv.stop()


def assert_still_healthy(srv) -> None:
    assert srv.process.poll() is None, "the server exited"
    assert send(srv.port, "GET", "/v2/health/ready")[0] == 200
    status, headers, data = send(srv.port, "POST", MLP, body())
    assert status == 200 and json.loads(data)["outputs"][0]["data"] == BASELINE["data"]


def run_case(srv, c: Case) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one case."""
    return send(srv.port, c.method, c.path, c.body, c.headers)


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_hostile_request(server, c: Case):
    before = peak_rss_kb(server.workers[0])
    status, headers, data = run_case(server, c)
    assert status == c.status, data[:500]
    assert headers["x-request-id"]
    if status >= 400:
        ERROR_RESPONSES[c.id] = (status, headers, data)
        assert headers["content-type"] == "application/json"
        error = json.loads(data)["error"]
        assert isinstance(error, str)
        for fragment in c.fragments:
            assert fragment in error, error[:1000]
        assert len(data) < 10_000, "an error message grows with the request"
    else:
        c.check(headers, data)
    if "bomb" in c.id:  # refused without inflating the gigabyte: the worker's peak memory barely moved
        assert peak_rss_kb(server.workers[0]) - before < 256 * 1024
    assert_still_healthy(server)


def forbidden_texts(tmp_root: Path) -> list[str]:
    """Text that must never appear in a response: stack traces and this machine's paths."""
    paths = {str(ROOT), str(SHIPPED_MODELS.resolve()), sys.prefix, sys.base_prefix, str(tmp_root),
             tempfile.gettempdir() + os.sep, *site.getsitepackages()}
    return ["Traceback", 'File "', "site-packages", *sorted(p for p in paths if len(p) > 1)]


def test_no_error_response_shows_a_stack_trace_or_a_path(server, tmp_path_factory):
    for c in CASES:  # when only some cases ran (-k), send the others now
        if c.status >= 400 and c.id not in ERROR_RESPONSES:
            ERROR_RESPONSES[c.id] = run_case(server, c)
    forbidden = forbidden_texts(tmp_path_factory.getbasetemp())
    for case_id, (_, headers, data) in ERROR_RESPONSES.items():
        text = "\n".join([data.decode("utf-8", "replace"), json.loads(data)["error"], json.dumps(headers)])
        leaked = [f for f in forbidden if f in text]
        assert not leaked, (case_id, leaked, text[:500])


# gRPC: each case is one ModelInfer message, sent as bytes so that malformed protobuf can be sent too, to the same
# server's gRPC port. Each gets its error status with a message naming the field; the server stays healthy.
def infer_message(model="digits-mlp", inputs=(("input", "FP32", [1, 64]),), raw=(b"\0" * 256,), **fields) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model, **fields)
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(raw)
    return request.SerializeToString()


def typed_message(**contents) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="digits-mlp")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64], contents=contents)
    return request.SerializeToString()


INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
GRPC_CASES: dict[str, tuple[bytes, grpc.StatusCode, str]] = {
    "malformed protobuf: a field that claims 4 GiB": (
        b"\x0a\xff\xff\xff\xff\x0f garbage", INVALID, "the request is not a valid ModelInferRequest message"),
    "malformed protobuf: truncated in a field": (
        infer_message()[:-100], INVALID, "the request is not a valid ModelInferRequest message"),
    "malformed protobuf: a wire type that does not exist": (
        b"\x0f\x01", INVALID, "the request is not a valid ModelInferRequest message"),
    "raw contents whose size does not match the shape": (
        infer_message(raw=[b"\0" * 100]), INVALID, "needs 256 bytes of raw contents, got 100"),
    "more raw contents than inputs": (
        infer_message(raw=[b"\0" * 256, b"\0" * 4]), INVALID, "raw_input_contents: 2 given for 1 inputs"),
    "a 2 GiB declared size": (
        infer_message(inputs=[("input", "FP32", [1, 1 << 29])]), INVALID, "more than the limit of"),
    "a declared size that overflows int64": (
        infer_message(inputs=[("input", "FP32", [1 << 40, 1 << 40])]), INVALID, "input 'input'.shape: expected"),
    "a negative dimension": (
        infer_message(inputs=[("input", "FP32", [-1, 64])]), INVALID, "non-negative integers, got [-1, 64]"),
    "an unknown datatype": (
        infer_message(inputs=[("input", "FLOAT32", [1, 64])]), INVALID, "datatype: expected one of"),
    "an empty datatype": (
        infer_message(inputs=[("input", "", [1, 64])]), INVALID, "datatype: expected one of"),
    "no inputs at all": (infer_message(inputs=(), raw=()), INVALID, "inputs: expected at least one tensor"),
    "an unknown input": (
        infer_message(inputs=[("pixels", "FP32", [1, 64])]), INVALID, "unexpected input 'pixels'"),
    "an unknown output": (
        infer_message(outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="logits")]),
        INVALID, "unknown output 'logits'"),
    "typed contents of the wrong count": (
        typed_message(fp32_contents=[1.0] * 3), INVALID, "fp32_contents: shape needs 64 elements, got 3"),
    "typed contents of another datatype": (
        typed_message(int_contents=[1] * 64), INVALID, "FP32 is read from fp32_contents, got int_contents"),
    "typed and raw contents together": (
        infer_message(inputs=()) + typed_message(fp32_contents=[0.0] * 64),  # concatenated messages merge
        INVALID, "has both contents and raw_input_contents"),
    "an unknown model": (
        infer_message(model="no-such-model"), NOT_FOUND, "Request for unknown model: 'no-such-model' is not found"),
    "a model name that is a path": (infer_message(model="../digits-mlp"), NOT_FOUND, "unknown model"),
    "a version that is not a number": (
        infer_message(model_version="latest"), INVALID, "model version must be a positive integer, got 'latest'"),
    "an unknown version": (infer_message(model_version="999"), NOT_FOUND, "'digits-mlp' version 999 is not found"),
}
GRPC_ERRORS: dict[str, str] = {}  # case id -> the details of its error status


def grpc_infer(server, message: bytes) -> bytes:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return call(message, timeout=30)


def assert_grpc_still_healthy(server) -> None:
    assert_still_healthy(server)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
        answer = stub.ModelInfer(service_pb2.ModelInferRequest.FromString(
            infer_message(raw=[np.array([PIXELS], "<f4").tobytes()])), timeout=10)
    got = np.frombuffer(answer.raw_output_contents[0], "<f4")
    np.testing.assert_allclose(got, BASELINE["data"], rtol=1e-6)


@pytest.mark.parametrize("case", list(GRPC_CASES))
def test_hostile_grpc_message(server, case):
    message, code, fragment = GRPC_CASES[case]
    with pytest.raises(grpc.RpcError) as caught:
        grpc_infer(server, message)
    details = caught.value.details()
    GRPC_ERRORS[case] = details
    assert caught.value.code() == code, details
    assert fragment in details, details
    assert len(details) < 10_000, "an error message grows with the request"
    assert_grpc_still_healthy(server)


def test_a_grpc_message_over_the_size_limit_is_refused(server):
    with pytest.raises(grpc.RpcError) as caught:
        grpc_infer(server, infer_message(raw=[b"\0" * (17 << 20)]))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
    assert_grpc_still_healthy(server)


def test_a_stream_answers_each_hostile_message_with_an_error_and_goes_on(server):
    good = infer_message(raw=[np.array([PIXELS], "<f4").tobytes()])
    messages = [GRPC_CASES[c][0] for c in GRPC_CASES if not c.startswith("malformed")] + [good]
    with grpc.insecure_channel(server.grpc_url) as channel:
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                       request_serializer=lambda b: b,
                                       response_deserializer=service_pb2.ModelStreamInferResponse.FromString)
        answers = list(stream(iter(messages), timeout=60))
    assert len(answers) == len(messages)
    assert all(a.error_message for a in answers[:-1]), [a.error_message for a in answers]
    assert not answers[-1].error_message
    got = np.frombuffer(answers[-1].infer_response.raw_output_contents[0], "<f4")
    np.testing.assert_allclose(got, BASELINE["data"], rtol=1e-6)
    GRPC_ERRORS.update({f"stream {i}": a.error_message for i, a in enumerate(answers[:-1])})


def test_no_grpc_error_shows_a_stack_trace_or_a_path(server, tmp_path_factory):
    for case, (message, _, _) in GRPC_CASES.items():  # when only some cases ran (-k), send the others now
        if case not in GRPC_ERRORS:
            with pytest.raises(grpc.RpcError) as caught:
                grpc_infer(server, message)
            GRPC_ERRORS[case] = caught.value.details()
    forbidden = forbidden_texts(tmp_path_factory.getbasetemp())
    for case, details in GRPC_ERRORS.items():
        leaked = [f for f in forbidden if f in details]
        assert not leaked, (case, leaked, details[:500])



def test_the_server_logged_no_traceback_and_kept_its_worker(server):
    assert server.process.poll() is None
    assert worker_pids(server.process.pid) == server.workers, "a worker died and was respawned"
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log and "Unexpected exit" not in log and "unhandled error" not in log, log[-3000:]
