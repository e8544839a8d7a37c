"""The test confusion matrix of a text run (confusion.json), as a plot for the model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def confusion_plot(run_dir: Path) -> Path:
    """plots/confusion.png of the run: rows are the true classes, columns the predicted ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = json.loads((run_dir / "confusion.json").read_text())
    labels, matrix = record["labels"], np.array(record["model"])
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for i, j in np.ndindex(matrix.shape):
        ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("test confusion matrix")
    return _save(fig, run_dir / "plots" / "confusion.png")


def confusion_text(run_dir: Path) -> str:
    """The test confusion matrices of the model and of its baseline (confusion.json) as a model-card section."""
    record = json.loads((Path(run_dir) / "confusion.json").read_text())
    labels = record["labels"]
    lines = ["## Test confusion matrices", "", "Rows: the true language; columns: the predicted one.", ""]
    for name, matrix in ((k, v) for k, v in record.items() if k != "labels" and v):
        width = max(len(str(x)) for row in matrix for x in row) + 1
        lines += [f"{'this model' if name == 'model' else name}:", "", "```",
                  "    " + "".join(f"{label:>{width}}" for label in labels)]
        lines += [f"{label:<4}" + "".join(f"{x:>{width}}" for x in row) for label, row in zip(labels, matrix)]
        lines += ["```", ""]
    return "\n".join(lines)


def learning_curve_plot(run_dir: Path) -> Path:
    """plots/bits_per_char.png of a language model's run: bits per character by epoch (metrics.jsonl), with its
    n-gram baselines on the test split as dashed lines (summary.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    baselines = json.loads((run_dir / "summary.json").read_text())["baseline"]["all"]
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["train_bits_per_char"] for r in rows], marker="o", label="LSTM, training (dropout on)")
    ax.plot(epochs, [r["val_bits_per_char"] for r in rows], marker="o", label="LSTM, validation")
    for name, value in baselines.items():
        ax.axhline(value, linestyle="--", linewidth=0.8, color="gray")
        ax.annotate(name.replace("_kneser_ney", " KN"), (epochs[-1], value), fontsize=7, va="bottom", ha="right")
    ax.set_xlabel("epoch")
    ax.set_ylabel("bits per character")
    ax.set_ylim(top=min(3.2, max(r["train_bits_per_char"] for r in rows) + 0.1))
    ax.legend(fontsize=8)
    return _save(fig, run_dir / "plots" / "bits_per_char.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
