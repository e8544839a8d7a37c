"""Small built-in text for the text generator's tests, and a tiny generator trained on it in seconds."""

from __future__ import annotations

import random
from pathlib import Path

from training.config import RunConfig

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "la niña", "das Mädchen", "every child"]
VERBS = ["sees", "likes", "paints", "follows", "finds", "remembers"]
OBJECTS = ["a red tree", "the blue sea", "an old house", "the café", "a small bird", "the moon"]


def sentences(n: int, seed: int = 0) -> list[str]:
    """n distinct sentences made of the words above (each ends with its number)."""
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
            f"{rng.choice(['.', '!', ' today.', ' at night.'])} #{i}" for i in range(n)]


def tiny_config(path: Path, **model) -> RunConfig:
    return RunConfig.from_dict({
        "name": "tiny-writer", "arch": "char-lstm", "dataset": str(path), "seed": 0,
        "model": {"min_char_count": 2, "embed_dim": 8, "hidden_size": 24, "ngram_orders": [2, 3], "ngram_buckets": 97,
                  "bf16_autocast": True, **model},
        "optimizer": {"name": "adam", "lr": 0.01}, "train": {"batch_size": 32, "epochs": 2},
        "split": {"val": 0.1, "test": 0.1}})


def train_tiny_writer(tmp: Path, n: int = 400):
    """(run folder, summary) of a tiny char-lstm trained on `sentences(n)` written to tmp/lines.txt."""
    from training.textgen import fit_writer

    (tmp / "lines.txt").write_text("\n".join(sentences(n)) + "\n\n", encoding="utf-8")
    return tmp / "run", fit_writer(tiny_config(tmp / "lines.txt"), tmp / "run", log=lambda _m: None)
