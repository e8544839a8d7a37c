"""Word tokenization with standard ONNX operators, and the same tokenization in Python for training.

The graph front-end is StringNormalizer (lower case, locale C.UTF-8) -> StringSplit (opset 20, runs of spaces)
-> LabelEncoder (ai.onnx.ml: word -> id, out-of-vocabulary -> UNK) -> RegexFullMatch (opset 20: an unknown word
gets the id of the first UNKNOWN_GROUPS class of letters it holds, so that it keeps its script and diacritics)
-> the first MAX_WORDS words -> a CLS id in front. `encode` does exactly this in Python; the parity tests hold the
two together.
"""

from __future__ import annotations

import collections
import re

import numpy as np

PAD, UNK, CLS = 0, 1, 2  # then one id per UNKNOWN_GROUPS class, then the words (FIRST_WORD_ID on)
# Letters an unknown word may hold, in priority order (after lower-casing): the first class it holds names its id.
UNKNOWN_GROUPS = ("ыэё", "ъѝ", "Ѐ-ӿ", "ąęłńśźż", "řůěčšžťďňý", "ĉĝĥĵŝŭ", "ãõç", "ñ¿¡", "ßäöü", "àèìòù",
                  "áéíóúâêô", "a-z", "0-9")
FIRST_WORD_ID = 3 + len(UNKNOWN_GROUPS)
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


_GROUP_PATTERNS = [f"(?s).*[{chars}].*" for chars in UNKNOWN_GROUPS]  # RE2 and Python's re read them alike


def unknown_id(word: str) -> int:
    """The id of a word that is not in the vocabulary: its first UNKNOWN_GROUPS class, else UNK."""
    for k, pattern in enumerate(_GROUP_PATTERNS):
        if re.fullmatch(pattern, word):
            return 3 + k
    return UNK


def encode(texts, vocab: list[str]) -> list[list[int]]:
    """Each text as ids: CLS, then the ids of its first MAX_WORDS words (`unknown_id` for a word not in `vocab`)."""
    index = {w: i + FIRST_WORD_ID for i, w in enumerate(vocab)}
    return [[CLS] + [index[w] if w in index else unknown_id(w) for w in words(t)[:MAX_WORDS]] for t in texts]


def pad(ids: list[list[int]]) -> np.ndarray:
    """Ragged id lists -> int64 [B, T] padded with PAD to the longest."""
    out = np.full((len(ids), max(len(x) for x in ids)), PAD, dtype=np.int64)
    for i, row in enumerate(ids):
        out[i, :len(row)] = row
    return out


def _unknown_groups(ids: str, out: str, const) -> list:
    """Nodes that give each unknown word (id UNK) the id of the first UNKNOWN_GROUPS class of letters it holds."""
    from onnx import helper

    nodes = [const("unk", [UNK]), helper.make_node("Equal", [ids, "unk"], ["unknown"])]
    current = ids
    for k, pattern in enumerate(_GROUP_PATTERNS):
        nodes += [helper.make_node("RegexFullMatch", ["split_words"], [f"has_{k}"], pattern=pattern),
                  helper.make_node("And", ["unknown", f"has_{k}"], [f"take_{k}"]),
                  const(f"group_{k}", [3 + k]),
                  helper.make_node("Equal", [current, "unk"], [f"still_{k}"]),
                  helper.make_node("And", [f"take_{k}", f"still_{k}"], [f"set_{k}"]),
                  helper.make_node("Where", [f"set_{k}", f"group_{k}", current], [f"ids_{k}"])]
        current = f"ids_{k}"
    return nodes + [helper.make_node("Identity", [current], [out])]


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
                         keys_strings=[""] + list(vocab),
                         values_int64s=[PAD] + list(range(FIRST_WORD_ID, len(vocab) + FIRST_WORD_ID)),
                         default_int64=UNK),
        *_unknown_groups("word_ids", "grouped_ids", const),
        const("starts", [0]), const("ends", [MAX_WORDS]), const("axes", [1]),
        helper.make_node("Slice", ["grouped_ids", "starts", "ends", "axes"], ["kept"]),  # [B, min(W, MAX_WORDS)]
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
