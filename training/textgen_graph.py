"""The served generator: one ONNX graph that reads a prompt and writes its continuation, the sampling loop inside.

Inputs, one row per prompt: `prompt` STRING [B], `max_new_tokens` INT64 [B], `temperature` FP32 [B], `seed`
INT64 [B]. Output: `text` STRING [B], the characters written after the prompt (the prompt itself is not repeated).

1. The prompt is split into characters by ONNX Runtime's own `Tokenizer` (domain com.microsoft, character mode:
   `separators = [""]`); `LabelEncoder` maps each to its id (unknown characters to UNK), a BOS id goes in front.
2. The `LSTM` operator reads the whole prompt, its `sequence_lens` stopping each row at its own last character,
   so prompts of any lengths share a batch.
3. A `Loop` writes: at each step the logits are divided by the row's temperature, the special ids masked, and the
   next character drawn by inverse transform sampling from the row's own random stream (below a temperature of
   0.001, the most likely character is taken: 0 is greedy decoding); it is appended with
   `StringConcat` and fed back through one LSTM step. A row stops at EOS or at its `max_new_tokens`; the loop stops
   when every row has.

The random stream is the Park-Miller generator (x -> 48271 x mod 2^31 - 1) started from the row's scrambled seed,
in int64 arithmetic: the same seed gives the same text, and the stream does not depend on the rest of the batch.
`generate` below runs the same procedure on the torch model; the export checks that both write the same text.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from training.textgen import BOS, EOS, FIRST_CHAR, NGRAM_MULTIPLIER, PAD, UNK

MAX_NEW_TOKENS = 1000  # the loop's cap: a larger max_new_tokens writes this many (the service refuses it)
MIN_TEMPERATURE = 1e-3  # below it, the most likely character is written (greedy decoding)
MODULUS, MULTIPLIER = 2147483647, 48271
SCRAMBLE = 1_664_525_013  # spreads nearby seeds over the stream: seed 1 would otherwise start at 48271 / 2^31
MASKED = (PAD, UNK, BOS)  # never written
NEG = -1e9


def first_state(seed: np.ndarray) -> np.ndarray:
    """The generator's state for a seed: in 1 .. 2^31 - 2."""
    return np.mod((np.mod(seed.astype(np.int64), MODULUS - 1) + 1) * SCRAMBLE, MODULUS)


def next_uniform(state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the next state, a float32 uniform in (0, 1)) for each row."""
    state = np.mod(state * MULTIPLIER, MODULUS)
    return state, state.astype(np.float32) / np.float32(MODULUS)


def draw(logits: np.ndarray, temperature: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The next id of each row: softmax(logits / temperature), the specials masked, inverse transform at u."""
    z = logits / np.maximum(temperature, np.float32(MIN_TEMPERATURE))[:, None]
    z[:, list(MASKED)] += np.float32(NEG)
    greedy = z.argmax(1)
    z = np.exp(z - z.max(1, keepdims=True))
    cdf = np.cumsum(z / z.sum(1, keepdims=True), axis=1, dtype=np.float32)
    drawn = np.minimum((cdf < (u * cdf[:, -1])[:, None]).sum(1), logits.shape[1] - 1)
    return np.where(temperature < np.float32(MIN_TEMPERATURE), greedy, drawn)


def generate(model, chars: list[str], prompts: list[str], max_new_tokens: list[int], temperature: list[float],
             seed: list[int]) -> list[str]:
    """What the graph writes, computed with the torch model one prompt at a time."""
    import torch

    from training.textgen import encode

    out = []
    with torch.inference_mode():
        for prompt, limit, temp, s in zip(prompts, max_new_tokens, temperature, seed):
            ids = encode(prompt, chars)[:-1]  # BOS and the prompt, no EOS
            logits, state = model(torch.tensor([ids]))
            logits = logits[:, -1].numpy()
            history = ([BOS] * model.context_size + ids)[len(ids):]  # the last context_size ids, oldest first
            rng, written = first_state(np.array([s])), []
            for _ in range(min(limit, MAX_NEW_TOKENS)):
                rng, u = next_uniform(rng)
                k = int(draw(logits.copy(), np.array([temp], dtype=np.float32), u)[0])
                if k == EOS:
                    break
                written.append(chars[k - FIRST_CHAR])
                step, state = model(torch.tensor([[k]]), state, torch.tensor([history]))
                logits = step[:, -1].numpy()
                history = (history + [k])[-model.context_size:] if model.context_size else []
            out.append("".join(written))
    return out


def _lstm_weights(model) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(W, R, B) of each layer in ONNX's gate order (i, o, f, c) from torch's (i, f, g, o)."""
    lstm = model.lstm
    layers = []
    h = lstm.hidden_size
    reorder = np.concatenate([np.arange(0, h), np.arange(3 * h, 4 * h), np.arange(h, 2 * h), np.arange(2 * h, 3 * h)])
    for k in range(lstm.num_layers):
        w = getattr(lstm, f"weight_ih_l{k}").detach().numpy()[reorder]
        r = getattr(lstm, f"weight_hh_l{k}").detach().numpy()[reorder]
        b = np.concatenate([getattr(lstm, f"bias_ih_l{k}").detach().numpy()[reorder],
                            getattr(lstm, f"bias_hh_l{k}").detach().numpy()[reorder]])
        layers.append((w[None], r[None], b[None]))
    return layers


def _const(name: str, value) -> object:
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def _lstm_nodes(layers: int, hidden: int, x: str, suffix: str, states: tuple[str, str] | None,
                lengths: str = "") -> list:
    """The LSTM layers over x [T, B, E] (from the given states h{k}, c{k}, or zeros), then the head:
    h{k}{suffix}, c{k}{suffix} [1, B, H] and logits{suffix} [B, V]."""
    from onnx import helper

    nodes = []
    for k in range(layers):
        given = [f"{states[0]}{k}", f"{states[1]}{k}"] if states else []
        nodes += [helper.make_node("LSTM", [x, f"W{k}", f"R{k}", f"B{k}", lengths, *given],
                                   [f"Y{k}{suffix}", f"h{k}{suffix}", f"c{k}{suffix}"], hidden_size=hidden),
                  helper.make_node("Squeeze", [f"Y{k}{suffix}", "axis1"], [f"x{k + 1}{suffix}"])]
        x = f"x{k + 1}{suffix}"
    return nodes + [helper.make_node("Squeeze", [f"h{layers - 1}{suffix}", "axis0"], [f"top{suffix}"]),
                    helper.make_node("MatMul", [f"top{suffix}", "head_w"], [f"mm{suffix}"]),
                    helper.make_node("Add", [f"mm{suffix}", "head_b"], [f"logits{suffix}"])]


def _ngram_nodes(orders: list[int], current: str, previous: Callable[[int], str], x: str, out: str,
                 suffix: str, unsqueeze: bool) -> list:
    """x plus each order's hashed n-gram embedding -> out. `current` holds the ids, `previous(j)` the ids j
    positions earlier; the hash is (h * NGRAM_MULTIPLIER + previous id) mod the buckets, as CharLM.inputs."""
    from onnx import helper

    make, nodes = helper.make_node, []
    for i, order in enumerate(orders):
        h = current
        for j in range(1, order):
            nodes += [make("Mul", [h, "ngram_multiplier"], [f"ng{i}_{j}_mul{suffix}"]),
                      make("Add", [f"ng{i}_{j}_mul{suffix}", previous(j)], [f"ng{i}_{j}_add{suffix}"]),
                      make("Mod", [f"ng{i}_{j}_add{suffix}", "ngram_buckets"], [f"ng{i}_{j}{suffix}"])]
            h = f"ng{i}_{j}{suffix}"
        if unsqueeze:  # a step: [B] -> [1, B], as the step's ids
            nodes.append(make("Unsqueeze", [h, "axis0"], [f"ng{i}_ids{suffix}"]))
            h = f"ng{i}_ids{suffix}"
        nodes += [make("Gather", [f"ngram_table{i}", h], [f"ng{i}_x{suffix}"]),
                  make("Add", [x, f"ng{i}_x{suffix}"], [f"ng{i}_sum{suffix}"])]
        x = f"ng{i}_sum{suffix}"
    return nodes + [make("Identity", [x], [out])]


def _loop_body(layers: int, hidden: int, chars: list[str], orders: list[int], context: int):
    """One written character per row: draw, append, step the LSTM (see the module's docstring)."""
    from onnx import TensorProto, helper

    make = helper.make_node
    nodes = [
        make("Mul", ["rng", "multiplier"], ["rng_product"]), make("Mod", ["rng_product", "modulus"], ["rng_out"]),
        make("Cast", ["rng_out"], ["rng_float"], to=TensorProto.FLOAT),
        make("Div", ["rng_float", "modulus_float"], ["u"]),
        make("Div", ["logits", "temperature_column"], ["scaled"]), make("Add", ["scaled", "mask"], ["masked"]),
        make("Softmax", ["masked"], ["p"], axis=1), make("CumSum", ["p", "one"], ["cdf"]),
        make("Slice", ["cdf", "minus_one", "vocab_end", "one_axis"], ["cdf_total"]),
        make("Unsqueeze", ["u", "one_axis"], ["u_column"]), make("Mul", ["u_column", "cdf_total"], ["target"]),
        make("Less", ["cdf", "target"], ["below"]), make("Cast", ["below"], ["below_int"], to=TensorProto.INT64),
        make("ReduceSum", ["below_int", "one_axis"], ["drawn"], keepdims=0),
        make("Min", ["drawn", "last_id"], ["sampled"]), make("ArgMax", ["masked"], ["likeliest"], axis=1, keepdims=0),
        make("Where", ["greedy", "likeliest", "sampled"], ["next_id"]),
        make("Not", ["done"], ["live"]), make("Less", ["iteration", "limits"], ["in_budget"]),
        make("And", ["live", "in_budget"], ["active"]), make("Equal", ["next_id", "eos"], ["is_eos"]),
        make("Not", ["is_eos"], ["not_eos"]), make("And", ["active", "not_eos"], ["write"]),
        make("LabelEncoder", ["next_id"], ["character"], domain="ai.onnx.ml",
             keys_int64s=list(range(FIRST_CHAR, FIRST_CHAR + len(chars))), values_strings=list(chars),
             default_string=""),
        make("Where", ["write", "character", "empty"], ["piece"]),
        make("StringConcat", ["text", "piece"], ["text_out"]),
        make("Not", ["write"], ["stops"]), make("Or", ["done", "stops"], ["done_out"]),
        make("Cast", ["done_out"], ["done_int"], to=TensorProto.INT64),
        make("ReduceMin", ["done_int"], ["all_done"], keepdims=0),
        make("Cast", ["all_done"], ["all_done_bool"], to=TensorProto.BOOL), make("Not", ["all_done_bool"], ["go_on"]),
        make("Unsqueeze", ["next_id", "axis0"], ["step_ids"]),
        make("Gather", ["embedding", "step_ids"], ["step_char_x"]),
        *(make("Gather", ["history", f"column{context - j}"], [f"step_previous{j}"], axis=1)
          for j in range(1, context + 1)),
        *_ngram_nodes(orders, "next_id", lambda j: f"step_previous{j}", "step_char_x", "step_x", "_step", True),
        make("Unsqueeze", ["next_id", "one_axis"], ["next_column"]),
        make("Slice", ["history", "one_axis", "history_end", "one_axis"], ["history_kept"]),
        make("Concat", ["history_kept", "next_column"], ["history_out"], axis=1),
        *_lstm_nodes(layers, hidden, "step_x", "_out", ("h", "c")),
        make("Identity", ["logits_out"], ["logits_next"]),
    ]
    value = helper.make_tensor_value_info
    carried = [*(value(f"{s}{k}", TensorProto.FLOAT, None) for s in "hc" for k in range(layers)),
               value("logits", TensorProto.FLOAT, None), value("rng", TensorProto.INT64, None),
               value("text", TensorProto.STRING, None), value("done", TensorProto.BOOL, None),
               value("history", TensorProto.INT64, None)]
    outputs = [value("go_on", TensorProto.BOOL, []),
               *(value(f"{s}{k}_out", TensorProto.FLOAT, None) for s in "hc" for k in range(layers)),
               value("logits_next", TensorProto.FLOAT, None), value("rng_out", TensorProto.INT64, None),
               value("text_out", TensorProto.STRING, None), value("done_out", TensorProto.BOOL, None),
               value("history_out", TensorProto.INT64, None)]
    inputs = [value("iteration", TensorProto.INT64, []), value("condition", TensorProto.BOOL, []), *carried]
    return helper.make_graph(nodes, "write_one_character", inputs, outputs)


def _weights(model) -> dict[str, np.ndarray]:
    """The network's tensors by graph name, and the mask that keeps the special ids from being written."""
    mask = np.zeros(model.config.vocab_size, dtype=np.float32)
    mask[list(MASKED)] = NEG
    weights = {"embedding": model.embed.weight.detach().numpy(), "head_w": model.head.weight.detach().numpy().T,
               "head_b": model.head.bias.detach().numpy(), "mask": mask}
    for k, (w, r, b) in enumerate(_lstm_weights(model)):
        weights.update({f"W{k}": w, f"R{k}": r, f"B{k}": b})
    for i, table in enumerate(model.ngrams):
        weights[f"ngram_table{i}"] = table.weight.detach().numpy()
    return weights


def _constants(model, context: int) -> dict:
    vocab = model.config.vocab_size
    return {"axis0": [0], "axis1": [1], "one_axis": [1], "one": np.int64(1), "minus_one": [-1],
            "vocab_end": [vocab], "last_id": np.int64(vocab - 1), "eos": np.int64(EOS), "bos": [BOS],
            "multiplier": np.int64(MULTIPLIER), "scramble": np.int64(SCRAMBLE), "modulus": np.int64(MODULUS),
            "seed_modulus": np.int64(MODULUS - 1), "modulus_float": np.float32(MODULUS),
            "cap": np.int64(MAX_NEW_TOKENS), "zero": np.int64(0), "min_temperature": np.float32(MIN_TEMPERATURE),
            "empty": np.array([""], dtype=object), "false": np.array([False]), "true": np.array(True),
            **({"ngram_multiplier": np.int64(NGRAM_MULTIPLIER), "ngram_buckets": np.int64(model.config.ngram_buckets)}
               if model.config.ngram_orders else {}),  # ONNX Runtime warns of constants that nothing reads
            "context_width": [context], "context_offsets": np.arange(context, dtype=np.int64)[None],
            "history_end": [context], **{f"column{c}": np.int64(c) for c in range(context)},
            **{f"shift_start{j}": [context - j] for j in range(1, context + 1)},
            **{f"shift_end{j}": [-j] for j in range(1, context + 1)}}


def _prompt_nodes(chars: list[str], orders: list[int], context: int) -> list:
    """The prompt as ids [B, T] with BOS in front, its lengths, the LSTM's input x0 [T, B, E] and the loop's first
    history (the last `context` ids of each row, oldest first)."""
    from onnx import TensorProto, helper

    make = helper.make_node
    return [
        make("Tokenizer", ["prompt"], ["prompt_chars"], domain="com.microsoft", mark=0, mincharnum=1, pad_value="",
             separators=[""]),
        make("LabelEncoder", ["prompt_chars"], ["prompt_ids"], domain="ai.onnx.ml", keys_strings=["", *chars],
             values_int64s=[PAD, *range(FIRST_CHAR, FIRST_CHAR + len(chars))], default_int64=UNK),
        make("Shape", ["prompt"], ["batch"]), make("Concat", ["batch", "axis1"], ["column_shape"], axis=0),
        make("Expand", ["bos", "column_shape"], ["bos_column"]),
        make("Concat", ["bos_column", "prompt_ids"], ["ids"], axis=1),
        make("Equal", ["ids", "zero"], ["is_pad"]), make("Not", ["is_pad"], ["is_token"]),
        make("Cast", ["is_token"], ["token_int"], to=TensorProto.INT32),
        make("ReduceSum", ["token_int", "one_axis"], ["lengths"], keepdims=0),
        make("Gather", ["embedding", "ids"], ["char_x"]),
        # the n-grams read `context` ids before each position: BOS in front of the text
        make("Concat", ["batch", "context_width"], ["context_shape"], axis=0),
        make("Expand", ["bos", "context_shape"], ["bos_context"]),
        make("Concat", ["bos_context", "ids"], ["full"], axis=1),
        *(make("Slice", ["full", f"shift_start{j}", f"shift_end{j}", "one_axis"], [f"previous{j}"])
          for j in range(1, context + 1)),
        *_ngram_nodes(orders, "ids", lambda j: f"previous{j}", "char_x", "x_batch_major", "", False),
        make("Transpose", ["x_batch_major"], ["x0"], perm=[1, 0, 2]),
        # positions L .. L + context - 1 of `full`, L the row's length with its BOS
        make("Cast", ["lengths"], ["lengths64"], to=TensorProto.INT64),
        make("Unsqueeze", ["lengths64", "one_axis"], ["length_column"]),
        make("Add", ["length_column", "context_offsets"], ["history_index"]),
        make("GatherElements", ["full", "history_index"], ["history0"], axis=1)]


def generator_graph(model, chars: list[str]):
    """The ONNX model: prompt, max_new_tokens, temperature, seed -> text (see the module's docstring)."""
    from onnx import TensorProto, helper, numpy_helper

    make = helper.make_node
    layers, hidden = model.config.num_layers, model.config.hidden_size
    orders = list(model.config.ngram_orders)
    context = max(1, model.context_size)  # the history carried by the loop (one id when there are no n-grams)
    weights = _weights(model)
    nodes = [_const(name, np.asarray(v, dtype=np.int64) if isinstance(v, list) else v)
             for name, v in _constants(model, context).items()]
    # the weights are stored as float16 (textgen.half_weights rounded them); ONNX Runtime folds these casts at load
    nodes += [make("Cast", [f"{name}_half"], [name], to=TensorProto.FLOAT) for name in weights if name != "mask"]
    nodes += [
        *_prompt_nodes(chars, orders, context),
        *_lstm_nodes(layers, hidden, "x0", "_prompt", None, "lengths"),
        make("Min", ["max_new_tokens", "cap"], ["capped"]), make("Max", ["capped", "zero"], ["limits"]),
        make("ReduceMax", ["limits"], ["trips"], keepdims=0),
        make("Max", ["temperature", "min_temperature"], ["floored"]),
        make("Less", ["temperature", "min_temperature"], ["greedy"]),
        make("Unsqueeze", ["floored", "one_axis"], ["temperature_column"]),
        make("Mod", ["seed", "seed_modulus"], ["seed_mod"]), make("Add", ["seed_mod", "one"], ["seed_one"]),
        make("Mul", ["seed_one", "scramble"], ["seed_scrambled"]), make("Mod", ["seed_scrambled", "modulus"], ["rng0"]),
        make("Expand", ["empty", "batch"], ["text0"]), make("Expand", ["false", "batch"], ["done0"]),
        make("Loop", ["trips", "true", *(f"{s}{k}_prompt" for s in "hc" for k in range(layers)), "logits_prompt",
                      "rng0", "text0", "done0", "history0"],
             [*(f"{s}{k}_final" for s in "hc" for k in range(layers)), "logits_final", "rng_final", "text",
              "done_final", "history_final"], body=_loop_body(layers, hidden, chars, orders, context)),
    ]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "fortunes_writer",
        [value("prompt", TensorProto.STRING, ["batch"]), value("max_new_tokens", TensorProto.INT64, ["batch"]),
         value("temperature", TensorProto.FLOAT, ["batch"]), value("seed", TensorProto.INT64, ["batch"])],
        [value("text", TensorProto.STRING, ["batch"])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(v), k) if k == "mask" else
                     numpy_helper.from_array(np.ascontiguousarray(v).astype(np.float16), f"{k}_half")
                     for k, v in weights.items()])
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                          helper.make_opsetid("ai.onnx.ml", 3),
                                                          helper.make_opsetid("com.microsoft", 1)])
    model_proto.ir_version = 10
    return model_proto
