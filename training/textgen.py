"""Train a character language model (arch `char-lstm`) into a run folder: an LSTM that reads a text one character
at a time and predicts the next, scored in bits per character against character n-gram models with interpolated
Kneser-Ney smoothing (training/textgen_ngram.py) on the same hash split.

Each text is one sequence: BOS, its characters, EOS. The model starts every text from a zero state, as the served
generator (training/textgen_graph.py) starts every prompt. The run folder holds config.json (the config, the
network's hyperparameters, the characters), best.pt, metrics.jsonl and summary.json (a runs.Summary).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from training.config import RunConfig, check_fields
from training.runs import Summary, library_versions
from training.textfit import batches

GEN_ARCHS = ("char-lstm",)
PAD, UNK, BOS, EOS = 0, 1, 2, 3  # then one id per character of the vocabulary (FIRST_CHAR on)
FIRST_CHAR = 4
DATA_KEYS = ("min_char_count", "bf16_autocast")  # model-table keys that shape the data or the training, not the network
EVAL_BATCH = 256
NGRAM_ORDERS = (3, 4, 5, 6, 7)


NGRAM_MULTIPLIER = 1_000_003  # the n-gram hash: h = (h * NGRAM_MULTIPLIER + previous id) mod ngram_buckets


@dataclasses.dataclass
class CharLMConfig:
    vocab_size: int = 100
    embed_dim: int = 32
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.0
    ngram_orders: list[int] = dataclasses.field(default_factory=list)  # e.g. [2, 3, 4, 5]; empty: characters only
    ngram_buckets: int = 8191  # rows of each n-gram's hashed embedding table (a prime)


class CharLM(nn.Module):
    """Character embedding plus hashed n-gram embeddings (the n characters ending at each position, fastText style)
    -> dropout -> LSTM -> dropout -> linear: next-symbol logits at every step."""

    def __init__(self, config: CharLMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.ngrams = nn.ModuleList(nn.Embedding(config.ngram_buckets, config.embed_dim) for _ in config.ngram_orders)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden_size, config.num_layers, batch_first=True,
                            dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    @property
    def context_size(self) -> int:
        """How many ids before the first one the n-grams read (BOS where the text has none)."""
        return max(self.config.ngram_orders, default=1) - 1

    def inputs(self, ids: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The LSTM's input at each position: the character's embedding plus its n-grams' ([B, T, E]).
        `context` [B, context_size] holds the ids before `ids`, oldest first (BOS when not given)."""
        x = self.embed(ids)
        m = self.context_size
        if not self.config.ngram_orders:
            return x
        if context is None:
            context = torch.full((ids.shape[0], m), BOS, dtype=ids.dtype)
        full = torch.cat([context, ids], 1)
        for order, table in zip(self.config.ngram_orders, self.ngrams):
            h = ids
            for j in range(1, order):
                h = (h * NGRAM_MULTIPLIER + full[:, m - j:full.shape[1] - j]) % self.config.ngram_buckets
            x = x + table(h)
        return x

    def forward(self, ids: torch.Tensor, state=None, context: torch.Tensor | None = None):
        out, state = self.lstm(self.drop(self.inputs(ids, context)), state)
        return self.head(self.drop(out)), state


def half_weights(model: CharLM) -> None:
    """Round every weight to float16, as the graph stores them (half the file; the rounded model is the one scored
    and exported, so torch and ONNX Runtime still agree exactly)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())


def bf16_autocast(config: RunConfig) -> bool:
    """Whether training runs in bfloat16 mixed precision: asked for (model.bf16_autocast) and the CPU has bfloat16
    instructions (AVX512-BF16; elsewhere bfloat16 is emulated and slower than float32)."""
    return bool(config.model.get("bf16_autocast", False)) and torch.cpu._is_avx512_bf16_supported()


def clean(text: str) -> str:
    """The text as the model is trained on it: control characters (the strfile files' backspaces and bells) out."""
    return "".join(c for c in text if c >= " ")


def build_chars(texts: list[str], min_count: int) -> list[str]:
    """The characters found at least `min_count` times in `texts`, most frequent first (ties by code point)."""
    counts: dict[str, int] = {}
    for text in texts:
        for c in text:
            counts[c] = counts.get(c, 0) + 1
    return sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))


def encode(text: str, chars: list[str]) -> list[int]:
    """BOS, then the id of each character (UNK for one not in `chars`), then EOS."""
    index = {c: i + FIRST_CHAR for i, c in enumerate(chars)}
    return [BOS] + [index.get(c, UNK) for c in text] + [EOS]


@dataclasses.dataclass
class Corpus:
    """The texts of a language model, split by hash, and where they came from."""

    parts: dict[str, list[str]]  # train, val, test -> cleaned texts
    name: str  # the dataset's name: `fortunes`, or the file's or folder's own name
    source: str  # bundled, file or folder
    description: str


def read_lines(path: Path) -> list[str]:
    """A .txt file: each non-empty line one text."""
    from training.textdata import normalize

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{Path(path).name}: is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [t for t in (normalize(line) for line in lines) if t]


def load_texts(config: RunConfig) -> Corpus:
    """The dataset's texts, cleaned and deduplicated, split by hash: a .txt file (a text per line), or a text dataset
    (`fortunes`, a folder of class folders, a CSV with data.text) of one class when data.language names it."""
    from training.data import dataset_label, load_dataset
    from training.textdata import hash_split

    options = dict(config.data)
    language = options.pop("language", None)
    if Path(config.dataset).suffix.lower() == ".txt":
        if language is not None:
            raise ValueError("data.language: a .txt file has no classes to choose from; leave it out")
        texts, source = read_lines(Path(config.dataset)), "file"
        name = Path(config.dataset).name
    else:
        data = load_dataset(config.dataset, options)
        if data.kind != "text":
            raise ValueError(f"dataset {config.dataset!r} holds {data.kind} data; arch {config.arch!r} needs text")
        texts, source, name = list(data.X), data.source, data.name
        if language is not None:
            if language not in data.labels:
                raise ValueError(f"data.language: expected one of {data.labels}, got {language!r}")
            texts = [t for t, y in zip(texts, data.y) if data.labels[y] == language]
    texts = list(dict.fromkeys(c for c in (clean(t) for t in texts) if c))
    if len(texts) < 10:
        raise ValueError(f"{name}: expected at least 10 distinct texts to train a language model, found {len(texts)}")
    parts = hash_split(texts, config.split.val, config.split.test, config.seed)
    described = f"{len(texts)} distinct texts of {dataset_label(name)}" + (f", language {language}" if language else "")
    return Corpus({p: [texts[i] for i in index] for p, index in zip(("train", "val", "test"), parts)}, name, source,
                  described)


def padded(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row)
    return out


def nats(model: CharLM, rows: list[list[int]]) -> tuple[float, int]:
    """(total negative log-likelihood in nats, number of predicted symbols) over encoded texts: every character
    and the EOS, each given the ones before it."""
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    with torch.inference_mode():
        for i in range(0, len(order), EVAL_BATCH):
            batch = padded([rows[j] for j in order[i:i + EVAL_BATCH]])
            logits, _ = model(batch[:, :-1])
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), ignore_index=PAD,
                                               reduction="sum")
            total += float(loss)
            count += int((batch[:, 1:] != PAD).sum())
    return total, count


def bits_per_char(model: CharLM, rows: list[list[int]]) -> float:
    total, count = nats(model, rows)
    return total / count / math.log(2)


def train_epochs(config: RunConfig, model: CharLM, rows: dict, out: Path, log: Callable[[str], None]) -> dict:
    """The epoch loop: Adam, a linear warm-up then cosine decay per step, the best validation bpc kept in best.pt."""
    opt = config.optimizer
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    steps = config.train.epochs * math.ceil(len(rows["train"]) / config.train.batch_size)
    warmup = max(1, steps // 50)
    cosine = lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))  # noqa: E731 (to 5 %)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * cosine(s))
    generator = torch.Generator().manual_seed(config.seed)
    bf16 = bf16_autocast(config)
    best = {"val_bits_per_char": math.inf, "epoch": 0}
    with (out / "metrics.jsonl").open("w") as metrics:
        for epoch in range(1, config.train.epochs + 1):
            model.train()
            total, count = 0.0, 0
            for chunk in batches(rows["train"], config.train.batch_size, generator):  # similar lengths
                batch = padded([rows["train"][j] for j in chunk])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # evaluation is in float32
                    logits, _ = model(batch[:, :-1])
                # flattened: cross_entropy over [B, V, T] (classes second) is far slower on the CPU
                loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(),
                                                   ignore_index=PAD)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip or 1.0)
                optimizer.step()
                schedule.step()
                n = int((batch[:, 1:] != PAD).sum())
                total, count = total + loss.item() * n, count + n
            row = {"epoch": epoch, "train_bits_per_char": total / count / math.log(2),
                   "val_bits_per_char": bits_per_char(model, rows["val"])}
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            log(f"epoch {epoch}: train {row['train_bits_per_char']:.4f} bpc  val {row['val_bits_per_char']:.4f} bpc")
            if row["val_bits_per_char"] < best["val_bits_per_char"]:
                best = {"val_bits_per_char": row["val_bits_per_char"], "epoch": epoch}
                torch.save(model.state_dict(), out / "best.pt")
    return best


def fit_writer(config: RunConfig, out: Path, log: Callable[[str], None] = print, quiet: bool = True) -> Summary:
    """Train `config` (arch char-lstm) into `out`; return its runs.Summary (also in summary.json)."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda _m: None) if quiet else log
    corpus = load_texts(config)
    texts = corpus.parts
    chars = build_chars(texts["train"], int(config.model.get("min_char_count", 20)))
    model_table = {k: v for k, v in config.model.items() if k not in DATA_KEYS}
    hyper = dataclasses.asdict(CharLMConfig(**{**check_fields(CharLMConfig, model_table, "model", counts=True),
                                               "vocab_size": len(chars) + FIRST_CHAR}))
    precision = "bfloat16 autocast" if bf16_autocast(config) else "float32"
    (out / "config.json").write_text(json.dumps({**config.to_dict(), "network": hyper, "chars": chars,
                                                 "precision": precision, "config_sha256": config.sha256()},
                                                indent=2) + "\n")
    rows = {part: [encode(t, chars) for t in texts[part]] for part in texts}
    model = CharLM(CharLMConfig(**hyper))
    best = train_epochs(config, model, rows, out, say)
    train_seconds = time.perf_counter() - started
    model.load_state_dict(torch.load(out / "best.pt", weights_only=True))
    half_weights(model)
    torch.save(model.state_dict(), out / "best.pt")  # the weights the graph holds
    test_bpc = bits_per_char(model, rows["test"])
    baselines = ngram_baselines(texts, chars)
    name = min(baselines, key=baselines.get)
    summary = Summary(
        name=config.name, dataset=corpus.name, dataset_source=corpus.source, dataset_description=corpus.description,
        task="generation", split=split_record(texts, config.seed), seed=config.seed, best_epoch=best["epoch"],
        epochs_run=config.train.epochs, headline_metric="bits_per_char",
        metrics={"test_bits_per_char": test_bpc, "val_bits_per_char": best["val_bits_per_char"]},
        baseline={"name": name, "value": baselines[name], "all": baselines}, library_versions=library_versions(),
        train_seconds=round(train_seconds, 3),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    summary.write(out)
    log(f"{config.name}: test {test_bpc:.4f} bits per character (best baseline {name}: {baselines[name]:.4f}), "
        f"trained in {train_seconds:.0f} s")
    return summary


def ngram_baselines(texts: dict[str, list[str]], chars: list[str]) -> dict[str, float]:
    """Test bits per character of Kneser-Ney character n-gram models of orders 3 to 7 (the best one is the
    baseline: choosing it on the test split itself favours the baseline, never the LSTM)."""
    from training.textgen_ngram import KneserNey, symbols

    data = {part: [symbols(t, chars) for t in texts[part]] for part in ("train", "test")}
    return {f"char_{order}gram_kneser_ney": KneserNey(order, data["train"]).bits_per_char(data["test"])
            for order in NGRAM_ORDERS}


def split_record(texts: dict[str, list[str]], seed: int) -> dict:
    return {"method": "by sha256 of each distinct text", "seed": seed, **{p: len(texts[p]) for p in texts},
            "characters": {p: sum(map(len, texts[p])) for p in texts}}


def load_writer_run(run_dir: Path) -> tuple[dict, Summary, CharLM]:
    """(config.json, summary, the best model in eval mode) of a finished char-lstm run."""
    run_dir = Path(run_dir)
    resolved = json.loads((run_dir / "config.json").read_text())
    summary = Summary.from_dict(json.loads((run_dir / "summary.json").read_text()))
    model = CharLM(CharLMConfig(**resolved["network"]))
    model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=True))
    return resolved, summary, model.eval()
