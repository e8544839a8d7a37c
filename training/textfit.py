"""Train a text classifier (arch `text-transformer`) into a run folder: data from training/textdata.py, characters
from training/texttokens.py, the model from training/architectures/text_transformer.py, scored against scikit-learn's
character n-gram TF-IDF with logistic regression on the same hash split.

The run folder holds config.json (the config, the network's hyperparameters, labels), vocab.json (the alphabet:
the characters the model knows), best.pt,
metrics.jsonl and summary.json (a runs.Summary, with the test confusion matrix in metrics as well).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from training.architectures.text_transformer import ServedTextClassifier, TextTransformer, TextTransformerConfig
from training.config import RunConfig, check_fields
from training.runs import Summary, library_versions
from training.texttokens import FIRST_CHAR_ID, MAX_CHARS, build_alphabet, encode, pad

DATA_KEYS = ("alphabet_min_count",)  # model-table keys that shape the data, not the network
EVAL_BATCH = 512


@dataclasses.dataclass
class TextData:
    """A text dataset split by hash: texts and class indices per part."""

    data: object  # training.data.Dataset of kind text
    parts: dict[str, np.ndarray]  # part -> indices

    def texts(self, part: str) -> list[str]:
        return list(self.data.X[self.parts[part]])

    def y(self, part: str) -> np.ndarray:
        return self.data.y[self.parts[part]]

    def describe(self, seed: int) -> dict:
        digest = hashlib.sha256()
        for part in ("train", "val", "test"):
            digest.update(np.ascontiguousarray(self.parts[part], dtype=np.int64).tobytes())
        return {"method": "by sha256 of each distinct text", "seed": seed,
                **{p: len(self.parts[p]) for p in ("train", "val", "test")}, "indices_sha256": digest.hexdigest()}


def load_text(config: RunConfig) -> TextData:
    from training.data import load_dataset
    from training.textdata import hash_split

    data = load_dataset(config.dataset, dict(config.data))
    if data.kind != "text":
        raise ValueError(f"dataset {config.dataset!r} holds {data.kind} data; arch {config.arch!r} needs text")
    train, val, test = hash_split(data.X, config.split.val, config.split.test, config.seed)
    return TextData(data, {"train": train, "val": val, "test": test})


def network_hyper(config: RunConfig, alphabet: list[str], classes: int) -> dict:
    model = {k: v for k, v in config.model.items() if k not in DATA_KEYS}
    model = check_fields(TextTransformerConfig, model, "model", counts=True)
    return dataclasses.asdict(TextTransformerConfig(**{**model, "vocab_size": len(alphabet) + FIRST_CHAR_ID,
                                                       "out_features": classes, "max_len": MAX_CHARS + 1}))


def predict(model: nn.Module, ids: list[list[int]]) -> np.ndarray:
    """Class probabilities [N, C] of encoded texts, in batches of similar length (padding does not change them)."""
    served = ServedTextClassifier(model).eval()
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(ids), model.config.out_features), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(ids), EVAL_BATCH):
            chunk = order[i:i + EVAL_BATCH]
            out[chunk] = served(torch.from_numpy(pad([ids[j] for j in chunk]))).numpy()
    return out


def classification_metrics(probs: np.ndarray, y: np.ndarray, classes: int) -> dict:
    pred = probs.argmax(1)
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (y, pred), 1)
    return {"accuracy": float((pred == y).mean()), "confusion": matrix.tolist()}


def tfidf_baseline(texts: TextData, classes: int) -> tuple[dict, list]:
    """Character 1-3-gram TF-IDF (within word boundaries) + logistic regression: ({name: accuracy}, confusion)."""
    import warnings

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, min_df=2,
                                 max_features=200_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = vectorizer.fit_transform(texts.texts("train"))
        model = LogisticRegression(C=10, max_iter=300).fit(features, texts.y("train"))
    probs = model.predict_proba(vectorizer.transform(texts.texts("test")))
    full = np.zeros((len(probs), classes), dtype=np.float32)
    full[:, model.classes_] = probs
    scored = classification_metrics(full, texts.y("test"), classes)
    return {"char_tfidf_logistic": scored["accuracy"]}, scored["confusion"]


def batches(ids: list[list[int]], batch: int, generator: torch.Generator):
    """Shuffled batches of similar lengths: shuffle, sort within windows of 50 batches, shuffle the batches."""
    order = torch.randperm(len(ids), generator=generator).tolist()
    window = batch * 50
    chunks = []
    for i in range(0, len(order), window):
        part = sorted(order[i:i + window], key=lambda j: len(ids[j]))
        chunks += [part[k:k + batch] for k in range(0, len(part), batch)]
    for k in torch.randperm(len(chunks), generator=generator).tolist():
        yield chunks[k]


def train_epochs(config: RunConfig, model: TextTransformer, ids: dict, texts: TextData, out: Path,
                 log: Callable[[str], None]) -> dict:
    """The epoch loop: AdamW, a linear warm-up then cosine decay per step, best val accuracy kept in best.pt."""
    opt = config.optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    steps = config.train.epochs * math.ceil(len(ids["train"]) / config.train.batch_size)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    generator = torch.Generator().manual_seed(config.seed)
    y_train = torch.from_numpy(texts.y("train"))
    best = {"val_accuracy": -1.0, "epoch": 0}
    with (out / "metrics.jsonl").open("w") as rows:
        for epoch in range(1, config.train.epochs + 1):
            model.train()
            total, seen = 0.0, 0
            for chunk in batches(ids["train"], config.train.batch_size, generator):
                batch = torch.from_numpy(pad([ids["train"][j] for j in chunk]))
                loss = nn.functional.cross_entropy(model(batch), y_train[chunk])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip or 1.0)
                optimizer.step()
                schedule.step()
                total, seen = total + loss.item() * len(chunk), seen + len(chunk)
            val = classification_metrics(predict(model, ids["val"]), texts.y("val"), model.config.out_features)
            row = {"epoch": epoch, "train_loss": total / seen, "val_accuracy": val["accuracy"]}
            rows.write(json.dumps(row) + "\n")
            rows.flush()
            log(f"epoch {epoch}: train_loss {row['train_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}")
            if row["val_accuracy"] > best["val_accuracy"]:
                best = {"val_accuracy": row["val_accuracy"], "epoch": epoch}
                torch.save(model.state_dict(), out / "best.pt")
    return best


def fit_text(config: RunConfig, out: Path, log: Callable[[str], None] = print, quiet: bool = True) -> Summary:
    """Train `config` (arch text-transformer) into `out`; return its runs.Summary (also in summary.json)."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    threads = torch.get_num_threads()
    # One thread: with tensors this small, intra-op threads cost more than they give (7x slower per step measured
    # with 2 threads on a busy 2-core machine).
    torch.set_num_threads(1)
    try:
        return _fit_text(config, out, log, quiet, started)
    finally:
        torch.set_num_threads(threads)


def _fit_text(config: RunConfig, out: Path, log: Callable[[str], None], quiet: bool, started: float) -> Summary:
    out.mkdir(parents=True, exist_ok=True)
    texts = load_text(config)
    data = texts.data
    alphabet = build_alphabet(texts.texts("train"), int(config.model.get("alphabet_min_count", 5)))
    hyper = network_hyper(config, alphabet, len(data.labels))
    (out / "vocab.json").write_text(json.dumps(alphabet, ensure_ascii=False) + "\n")
    (out / "config.json").write_text(json.dumps({**config.to_dict(), "network": hyper, "labels": data.labels,
                                                 "config_sha256": config.sha256()}, indent=2) + "\n")
    ids = {p: encode(texts.texts(p), alphabet) for p in ("train", "val", "test")}
    model = TextTransformer(TextTransformerConfig(**hyper))
    best = train_epochs(config, model, ids, texts, out, log if not quiet else (lambda _m: None))
    train_seconds = time.perf_counter() - started
    model.load_state_dict(torch.load(out / "best.pt", weights_only=True))
    test = classification_metrics(predict(model, ids["test"]), texts.y("test"), len(data.labels))
    baselines, baseline_confusion = tfidf_baseline(texts, len(data.labels))
    name = max(baselines, key=baselines.get)
    summary = Summary(
        name=config.name, dataset=data.name, dataset_source=data.source, dataset_description=data.description,
        task="multiclass", split=texts.describe(config.seed), seed=config.seed, best_epoch=best["epoch"],
        epochs_run=config.train.epochs, headline_metric="accuracy",
        metrics={"test_accuracy": test["accuracy"], "val_accuracy": best["val_accuracy"]},
        baseline={"name": name, "value": baselines[name], "all": baselines}, library_versions=library_versions(),
        train_seconds=round(train_seconds, 3), created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    summary.write(out)
    (out / "confusion.json").write_text(json.dumps({"labels": data.labels, "model": test["confusion"],
                                                    name: baseline_confusion}) + "\n")
    log(f"{config.name}: test accuracy {test['accuracy']:.4f} (best baseline {name}: {baselines[name]:.4f}), "
        f"trained in {train_seconds:.0f} s")
    return summary


def load_text_run(run_dir: Path) -> tuple[dict, Summary, list[str], TextTransformer]:
    """(config.json, summary, alphabet, the best model in eval mode) of a finished text run."""
    run_dir = Path(run_dir)
    resolved = json.loads((run_dir / "config.json").read_text())
    summary = Summary.from_dict(json.loads((run_dir / "summary.json").read_text()))
    vocab = json.loads((run_dir / "vocab.json").read_text())
    model = TextTransformer(TextTransformerConfig(**resolved["network"]))
    model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=True))
    return resolved, summary, vocab, model.eval()
