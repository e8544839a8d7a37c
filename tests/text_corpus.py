"""Small built-in text for the text-model tests: three made-up word lists in three scripts, and a tiny trained
fortunes-language run over them (seconds, no Debian packages)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = {
    "en": "the cat dog house sees a big small runs and with tree water red blue".split(),
    "de": "der die das hund katze haus sieht ein großer kleiner läuft und mit baum wasser".split(),
    "ru": "кот собака дом видит большой маленький бежит и с дерево вода красный синий".split(),
}


def sentences(language: str, count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = WORDS[language]
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 12)))).capitalize() + "." for _ in range(count)]


def write_text_folder(root: Path, count: int = 120) -> Path:
    """root/<language>/<i>.txt, one sentence per file."""
    for k, language in enumerate(WORDS):
        (root / language).mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(sentences(language, count, k)):
            (root / language / f"{i}.txt").write_text(text, encoding="utf-8")
    return root


def train_tiny(tmp: Path) -> Path:
    """A finished text run (arch text-transformer) on the built-in text; returns its run folder."""
    from training.config import apply_overrides, load_config
    from training.textfit import fit_text

    folder = write_text_folder(tmp / "languages")
    config = apply_overrides(load_config("fortunes-language"), [
        f"dataset={str(folder)!r}", "train.epochs=3", "train.batch_size=32", "model.d_model=16", "model.nhead=2",
        "model.num_layers=1", "model.dim_feedforward=32", "model.ngram_buckets=1021", "optimizer.lr=0.01"])
    fit_text(config, tmp / "run")
    return tmp / "run"
