"""What a request's tensor costs to decode and its answer to encode, per element, in process: V2 JSON and
binary bodies of 784 (1x28x28) and 150,528 (3x224x224) FP32 elements, through the service's own
`decode_infer_request` and `encode_infer_response`.

    .venv/bin/python -m bench.tensor_cost [--out F]

For JSON it also times the alternative to parsing the data list with orjson into Python floats and converting
them with numpy: numpy parsing the list's text itself (`np.fromstring(text, sep=",")`).
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

import numpy as np
import orjson

from service.protocol import decode_infer_request, encode_infer_response

SIZES = {"1x28x28": (1, 1, 28, 28), "3x224x224": (1, 3, 224, 224)}


def best_us(call, budget: float = 0.5) -> float:
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    runs = max(3, int(budget / max(timer.timeit(number) / number, 1e-9) / number))
    return min(timer.repeat(repeat=min(runs, 7), number=number)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tensor_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for label, shape in SIZES.items():
        x = np.random.default_rng(0).random(shape, dtype=np.float32) * 255
        n = x.size
        data = x.reshape(-1).tolist()
        json_body = orjson.dumps({"inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32",
                                              "data": data}]})
        header = orjson.dumps({"inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32",
                                           "parameters": {"binary_data_size": x.nbytes}}]})
        binary_body = header + x.tobytes()
        results = [("probabilities", "FP32", x, False)]
        binary_results = [("probabilities", "FP32", x, True)]
        text = json_body[json_body.index(b"[", json_body.index(b'"data"')) + 1:json_body.rindex(b"]", 0, -3)]
        figures = {
            "json decode": best_us(lambda: decode_infer_request(json_body, None, 1 << 26)),
            "json encode": best_us(lambda: encode_infer_response("m", "1", None, results)),
            "binary decode": best_us(lambda: decode_infer_request(binary_body, len(header), 1 << 26)),
            "binary encode": best_us(lambda: encode_infer_response("m", "1", None, binary_results)),
            "orjson.loads + np.array (the data list alone)": best_us(
                lambda: np.array(orjson.loads(b"[" + text + b"]"), dtype=np.float32)),
            "np.fromstring(sep=',') (the data list alone)": best_us(
                lambda: np.fromstring(text, dtype=np.float32, sep=",")),
        }
        assert np.array_equal(np.fromstring(text, dtype=np.float32, sep=","), x.reshape(-1))
        for what, us in figures.items():
            rows.append({"tensor": label, "elements": n, "what": what, "us": us, "ns_per_element": us * 1e3 / n})
            print(f"{label:<10} {what:<48} {us:10.1f} µs  {us * 1e3 / n:6.1f} ns/element", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
