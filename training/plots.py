"""Run plots as PNG: loss and metric curves, and each task's own picture of the test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LOSSES = {"train_loss": "train", "val_loss": "validation", "d_loss": "discriminator", "g_loss": "generator"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: render to files only
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, **kwargs) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=90, **kwargs)
    plt.close(fig)
    return path


def plot_curves(out: Path, rows: list[dict]) -> Path:
    """Training and validation loss, and every validation metric, by epoch."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    metrics = [k for k in rows[0] if k.startswith("val_") and k != "val_loss"]
    fig, axes = plt.subplots(1, 1 + bool(metrics), figsize=(10 if metrics else 5, 3.6), squeeze=False)
    ax = axes[0][0]
    for key, label in LOSSES.items():
        if key in rows[0]:
            ax.plot(epochs, [r[key] for r in rows], label=label)
    ax.set(title="loss", xlabel="epoch")
    ax.legend()
    if metrics:
        ax = axes[0][1]
        for key in metrics:
            ax.plot(epochs, [r[key] for r in rows], label=key[4:])
        ax.set(title="validation metrics", xlabel="epoch")
        ax.legend()
    return _save(fig, out / "plots" / "curves.png")


def plot_confusion(out: Path, y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> Path:
    plt = _pyplot()
    k = len(labels)
    matrix = np.zeros((k, k), dtype=int)
    np.add.at(matrix, (y_true, y_pred), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * k, 1 + 0.45 * k))
    ax.imshow(matrix, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, matrix[i, j], ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set(xticks=range(k), yticks=range(k), xticklabels=labels, yticklabels=labels, xlabel="predicted",
           ylabel="true", title="test confusion matrix")
    plt.setp(ax.get_xticklabels(), rotation=45 if max(map(len, labels)) > 2 else 0)
    return _save(fig, out / "plots" / "confusion.png")


def plot_forecast(out: Path, X: np.ndarray, y: np.ndarray, pred: np.ndarray) -> Path:
    """One-step-ahead view of the test period: the actual series and the first forecast step of each window."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    ax.plot(y[:, 0], label="actual", lw=1.2)
    ax.plot(pred[:, 0], label="forecast (first step)", lw=1.2)
    if y.shape[1] > 1:
        ax.plot(np.arange(y.shape[1]) + len(y) - 1, pred[-1], "--", label=f"last window, {y.shape[1]} steps")
    ax.set(title="test period", xlabel="step")
    ax.legend()
    return _save(fig, out / "plots" / "forecast.png")


def image_grid(path: Path, rows: list[np.ndarray], row_titles: list[str], title: str) -> Path:
    """Rows of small grayscale images (each [N, H, W]) in one figure."""
    plt = _pyplot()
    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(0.8 * n + 1, 0.85 * len(rows) + 0.4), squeeze=False)
    for i, images in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(images):
                ax.imshow(images[j], cmap="gray_r")
        axes[i][0].text(-0.4, 0.5, row_titles[i], transform=axes[i][0].transAxes, ha="right", va="center",
                        fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, bbox_inches="tight")
