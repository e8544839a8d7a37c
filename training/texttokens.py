"""Character tokenization inside the ONNX graph, and the same tokenization in Python for training.

The graph front-end is StringConcat (a START character in front) -> Tokenizer (ONNX Runtime's contrib op, domain
com.microsoft) in regular-expression mode, which keeps the first 1 + MAX_CHARS code points as one string (so that
the cost after it does not grow with the input) -> StringNormalizer (lower case, locale C.UTF-8) -> Tokenizer in
character mode (one string per code point, padded with "") -> LabelEncoder (ai.onnx.ml: START -> CLS, "" -> PAD, a
character outside the alphabet -> UNK). `encode` does exactly this in Python; the parity tests hold the two
together. The character n-grams are hashed from these ids inside the network
(training/architectures/text_transformer.py).
"""

from __future__ import annotations

import collections

import numpy as np

PAD, UNK, CLS = 0, 1, 2  # then one id per character of the alphabet (FIRST_CHAR_ID on)
FIRST_CHAR_ID = 3
MAX_CHARS = 256  # characters after the first 256 are cut off (the CLS id makes at most 257 steps)
START = "\x02"  # put in front of every text inside the graph, read as CLS (wherever it occurs, in Python too)
LOCALE = "C.UTF-8"  # built into glibc: no locale package needed (ORT's default en_US.UTF-8 often is missing)
ML_OPSET = 3  # ai.onnx.ml version of LabelEncoder with keys_strings / values_int64s and default_int64
MS_DOMAIN, MS_OPSET = "com.microsoft", 1  # ONNX Runtime's contrib ops (Tokenizer), built into every ORT wheel
# ONNX Runtime lowers one code point at a time with the C library's simple case mapping; Python's str.lower()
# maps U+0130 to two code points and a word-final capital sigma to final sigma. These two fix that.
_SIMPLE_CASE = {0x130: "i", 0x3A3: "\u03c3"}


def lower(text: str) -> str:
    """Lower case as ONNX Runtime's StringNormalizer does it in the C.UTF-8 locale."""
    return text.translate(_SIMPLE_CASE).lower()


def chars(text: str) -> list[str]:
    """The characters of a text as the graph sees them: lower-cased, one per code point, all of them kept (spaces,
    tabs and newlines too), cut after MAX_CHARS."""
    return list(lower(text)[:MAX_CHARS])


def build_alphabet(texts, min_count: int) -> list[str]:
    """The characters found at least `min_count` times in `texts` (lower-cased), sorted; START is never one."""
    counts: collections.Counter = collections.Counter()
    for text in texts:
        counts.update(lower(text))
    return sorted(c for c, n in counts.items() if n >= min_count and c != START)


def encode(texts, alphabet: list[str]) -> list[list[int]]:
    """Each text as ids: CLS, then the ids of its first MAX_CHARS characters (UNK for one not in `alphabet`)."""
    index = {c: i + FIRST_CHAR_ID for i, c in enumerate(alphabet)} | {START: CLS}
    return [[CLS] + [index.get(c, UNK) for c in chars(t)] for t in texts]


def pad(ids: list[list[int]]) -> np.ndarray:
    """Ragged id lists -> int64 [B, T] padded with PAD to the longest."""
    out = np.full((len(ids), max(len(x) for x in ids)), PAD, dtype=np.int64)
    for i, row in enumerate(ids):
        out[i, :len(row)] = row
    return out


def tokenizer_graph(alphabet: list[str], input_name: str = "text", output_name: str = "ids"):
    """An ONNX model: STRING [B] -> int64 [B, T] of ids, exactly as `pad(encode(...))`."""
    from onnx import TensorProto, helper

    if START in alphabet or "" in alphabet or any(len(c) != 1 for c in alphabet):
        raise ValueError("the alphabet holds single characters only, START not among them")
    tokenizer = {"domain": MS_DOMAIN, "mark": 0, "mincharnum": 1, "pad_value": ""}
    nodes = [
        helper.make_node("Constant", [], ["start"], value=helper.make_tensor("start", TensorProto.STRING, [1],
                                                                             [START.encode()])),
        helper.make_node("StringConcat", ["start", input_name], ["started"]),  # never empty
        # regular-expression mode: the one match of the pattern, [B, 1]; "^" matches at the start of the text only
        helper.make_node("Tokenizer", ["started"], ["head"], tokenexp=f"^(?s).{{1,{MAX_CHARS + 1}}}", **tokenizer),
        helper.make_node("Constant", [], ["flat"], value=helper.make_tensor("flat", TensorProto.INT64, [1], [-1])),
        helper.make_node("Reshape", ["head", "flat"], ["kept"]),  # [B]
        # lower case maps one code point to one, so cutting first is the same as lowering first
        helper.make_node("StringNormalizer", ["kept"], ["lowered"], case_change_action="LOWER", locale=LOCALE),
        # character mode (separators [""]): [B, L] of code points, L <= 1 + MAX_CHARS, padded with ""
        helper.make_node("Tokenizer", ["lowered"], ["characters"], separators=[""], **tokenizer),
        helper.make_node("LabelEncoder", ["characters"], [output_name], domain="ai.onnx.ml",
                         keys_strings=["", START] + list(alphabet),
                         values_int64s=[PAD, CLS] + list(range(FIRST_CHAR_ID, len(alphabet) + FIRST_CHAR_ID)),
                         default_int64=UNK),
    ]
    # ONNX's shape inference has no schema for Tokenizer: the types of its outputs are stated here (without them,
    # onnx 1.23's inference crashes on the nodes that follow)
    value_info = [helper.make_tensor_value_info("head", TensorProto.STRING, ["batch", 1]),
                  helper.make_tensor_value_info("characters", TensorProto.STRING, ["batch", "sequence"])]
    graph = helper.make_graph(nodes, "tokenizer", [helper.make_tensor_value_info(input_name, TensorProto.STRING,
                                                                                 ["batch"])],
                              [helper.make_tensor_value_info(output_name, TensorProto.INT64, ["batch", "sequence"])],
                              value_info=value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                    helper.make_opsetid("ai.onnx.ml", ML_OPSET),
                                                    helper.make_opsetid(MS_DOMAIN, MS_OPSET)])
    model.ir_version = 10
    return model
