"""Word tokenization with standard ONNX operators, and the same tokenization in Python for training.

The graph front-end is StringNormalizer (lower case, locale C.UTF-8) -> StringSplit (opset 20, runs of spaces)
-> LabelEncoder (ai.onnx.ml: word -> id, out-of-vocabulary -> UNK) -> the first MAX_WORDS words -> a CLS id in
front. `encode` does exactly this in Python; the parity tests hold the two together.
"""

from __future__ import annotations

import collections

import numpy as np

PAD, UNK, CLS = 0, 1, 2  # ids 0-2; words start at 3
MAX_WORDS = 64  # words after the first 64 are cut off (the CLS id makes at most 65 steps)
LOCALE = "C.UTF-8"  # built into glibc: no locale package needed (ORT's default en_US.UTF-8 often is missing)
ML_OPSET = 3  # ai.onnx.ml version of LabelEncoder with keys_strings / values_int64s and default_int64
# ONNX Runtime lowers one code point at a time with the C library's simple case mapping; Python's str.lower()
# maps U+0130 to two code points and a word-final capital sigma to final sigma. These two fix that.
_SIMPLE_CASE = {0x130: "i", 0x3A3: "\u03c3"}


def lower(text: str) -> str:
    """Lower case as ONNX Runtime's StringNormalizer does it in the C.UTF-8 locale."""
    return text.translate(_SIMPLE_CASE).lower()


def words(text: str) -> list[str]:
    """The words of a text as the graph sees them: lower-cased, split on runs of spaces (U+0020 only: ONNX Runtime's
    StringSplit does not split on tabs or newlines)."""
    return [w for w in lower(text).split(" ") if w]


def build_vocab(texts, labels, per_class: int) -> list[str]:
    """The `per_class` words found in the most texts of each class, pooled: every class keeps its common words."""
    counts: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for text, label in zip(texts, labels):
        counts[int(label)].update(set(words(text)))
    return sorted({w for c in sorted(counts) for w, _ in counts[c].most_common(per_class)})


def encode(texts, vocab: list[str]) -> list[list[int]]:
    """Each text as ids: CLS, then the ids of its first MAX_WORDS words (UNK for a word not in `vocab`)."""
    index = {w: i + 3 for i, w in enumerate(vocab)}
    return [[CLS] + [index.get(w, UNK) for w in words(t)[:MAX_WORDS]] for t in texts]


def pad(ids: list[list[int]]) -> np.ndarray:
    """Ragged id lists -> int64 [B, T] padded with PAD to the longest."""
    out = np.full((len(ids), max(len(x) for x in ids)), PAD, dtype=np.int64)
    for i, row in enumerate(ids):
        out[i, :len(row)] = row
    return out


def tokenizer_graph(vocab: list[str], input_name: str = "text", output_name: str = "ids"):
    """An ONNX model: STRING [B] -> int64 [B, T] of ids, exactly as `pad(encode(...))`."""
    from onnx import TensorProto, helper

    def const(name: str, values: list[int]):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64,
                                                                                     [len(values)], values))

    nodes = [
        helper.make_node("StringNormalizer", [input_name], ["lowered"], case_change_action="LOWER", locale=LOCALE),
        helper.make_node("StringSplit", ["lowered"], ["split_words", "word_counts"]),  # [B, W], padded with ""
        # "" (the split's padding) -> PAD; a word not in the vocabulary -> UNK
        helper.make_node("LabelEncoder", ["split_words"], ["word_ids"], domain="ai.onnx.ml",
                         keys_strings=[""] + list(vocab), values_int64s=[PAD] + list(range(3, len(vocab) + 3)),
                         default_int64=UNK),
        const("starts", [0]), const("ends", [MAX_WORDS]), const("axes", [1]),
        helper.make_node("Slice", ["word_ids", "starts", "ends", "axes"], ["kept"]),  # [B, min(W, MAX_WORDS)]
        helper.make_node("Shape", [input_name], ["batch"]),
        const("one", [1]), const("cls", [CLS]),
        helper.make_node("Concat", ["batch", "one"], ["cls_shape"], axis=0),
        helper.make_node("Expand", ["cls", "cls_shape"], ["cls_column"]),  # [B, 1]
        helper.make_node("Concat", ["cls_column", "kept"], [output_name], axis=1),  # [B, 1 + min(W, MAX_WORDS)]
    ]
    graph = helper.make_graph(nodes, "tokenizer", [helper.make_tensor_value_info(input_name, TensorProto.STRING,
                                                                                 ["batch"])],
                              [helper.make_tensor_value_info(output_name, TensorProto.INT64, ["batch", "sequence"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                    helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    model.ir_version = 10
    return model
