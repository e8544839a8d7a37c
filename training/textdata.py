"""Text corpora: a folder of class folders of .txt files, a CSV with a text column, and the bundled `fortunes`
(Debian's fortune cookie collections in eleven languages); training.data turns each into a Dataset of kind `text`.

Entries are deduplicated, and split by a hash of each entry (`hash_split`), so that a text repeated across files
cannot land in both train and test.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# language label -> Debian package; the -off packages are left out
FORTUNE_PACKAGES = {
    "en": "fortunes", "de": "fortunes-de", "es": "fortunes-es", "it": "fortunes-it", "pt": "fortunes-br",
    "pl": "fortunes-pl", "ru": "fortunes-ru", "cs": "fortunes-cs", "bg": "fortunes-bg", "eo": "fortunes-eo",
    "ga": "fortunes-ga",
}
# Debian 12 ships every file in UTF-8; older releases kept legacy encodings, tried when UTF-8 fails.
LEGACY_ENCODINGS = {"ru": "koi8-r", "cs": "iso-8859-2", "pl": "iso-8859-2", "bg": "cp1251"}
FORTUNE_DIR = "/usr/share/games/fortunes"
MIN_ENTRIES = 300  # a language with fewer distinct entries is left out
MIN_LETTERS = 12  # an entry with fewer letters (ASCII art, a bare name) is left out
MAX_CHARS = 400  # longer entries (stories, ASCII art) are left out: the model reads sentences
INSTALL = "apt-get install -y --no-install-recommends " + " ".join(FORTUNE_PACKAGES.values())


@dataclass
class TextCorpus:
    """Distinct texts and their class indices into `classes`, with where they came from."""

    name: str
    texts: list[str]
    y: np.ndarray  # int64 [N]
    classes: list[str]
    source: str  # bundled, file or folder
    description: str


def normalize(text: str) -> str:
    """One line: runs of whitespace (newlines and tabs included) become one space; ends stripped."""
    return " ".join(text.split())


def read_strfile(path: Path, encoding: str | None = None) -> list[str]:
    """The entries of a strfile text file: separated by lines holding a single `%`, each normalized to one line."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        if encoding is None:
            raise ValueError(f"{path}: is not UTF-8 text; expected a UTF-8 strfile") from None
        text = raw.decode(encoding)
    entries = re.split(r"^%\s*$", text, flags=re.MULTILINE)
    return [e for e in (normalize(x) for x in entries) if e]


def dedupe(texts: list[str], labels: list[str]) -> tuple[list[str], list[str]]:
    """Each distinct text once, in first-seen order; a text found under two different labels is dropped."""
    seen: dict[str, str | None] = {}
    for text, label in zip(texts, labels):
        seen[text] = label if seen.get(text, label) == label else None
    kept = [(t, lab) for t, lab in seen.items() if lab is not None]
    return [t for t, _ in kept], [lab for _, lab in kept]


def hash_split(texts, val: float, test: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices: each text's part is decided by sha256(seed, text), so equal texts share a part."""
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise ValueError(f"split: val and test must be fractions with val + test < 1, got {val} and {test}")
    u = np.array([int.from_bytes(hashlib.sha256(f"{seed}:{t}".encode()).digest()[:8], "big") / 2 ** 64
                  for t in texts])
    index = np.arange(len(texts))
    return index[u >= val + test], index[(u >= test) & (u < val + test)], index[u < test]


def _installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return done.returncode == 0 and "install ok installed" in done.stdout


def ensure_packages(packages: list[str]) -> None:
    """Install missing Debian packages with apt when this process may (root, apt-get present); else fail with the
    exact command to run."""
    if shutil.which("dpkg-query") is None:
        raise ValueError(f"dataset fortunes: needs Debian's fortune packages; install them with: {INSTALL}")
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() == 0 and shutil.which("apt-get"):
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ,
                                                                            "DEBIAN_FRONTEND": "noninteractive"})
        if done.returncode == 0 and all(_installed(p) for p in missing):
            return
    raise ValueError(f"dataset fortunes: packages {missing} are not installed; install them with: {' '.join(command)}")


def package_files(package: str) -> list[Path]:
    """The strfile text files a package installed: regular files (not links, not .dat indexes, not off/)."""
    listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout.split("\n")
    files = [Path(f) for f in listed if f.startswith(FORTUNE_DIR + "/")]
    return sorted(f for f in files if f.is_file() and not f.is_symlink() and f.suffix != ".dat"
                  and "off" not in f.relative_to(FORTUNE_DIR).parts)


def is_sentence_like(text: str) -> bool:
    return len(text) <= MAX_CHARS and sum(c.isalpha() for c in text) >= MIN_LETTERS


def fortunes_entries() -> dict[str, list[str]]:
    """language -> its fortune entries (one line each, sentence-like, not yet deduplicated across languages)."""
    ensure_packages(list(FORTUNE_PACKAGES.values()))
    entries = {}
    for language, package in FORTUNE_PACKAGES.items():
        found = []
        for path in package_files(package):
            found += [e for e in read_strfile(path, LEGACY_ENCODINGS.get(language, "latin-1")) if is_sentence_like(e)]
        entries[language] = found
    return entries


def fortunes() -> TextCorpus:
    """The bundled `fortunes` dataset: distinct fortune entries labelled with their language (languages with at
    least MIN_ENTRIES distinct entries)."""
    entries = fortunes_entries()
    texts, labels = dedupe([e for lang in entries for e in entries[lang]],
                           [lang for lang in entries for _ in entries[lang]])
    counts = {lang: labels.count(lang) for lang in FORTUNE_PACKAGES}
    kept = [lang for lang in FORTUNE_PACKAGES if counts[lang] >= MIN_ENTRIES]
    pairs = [(t, lab) for t, lab in zip(texts, labels) if lab in kept]
    return text_corpus("fortunes", [t for t, _ in pairs], [lab for _, lab in pairs], kept, "bundled",
                        f"Debian fortune cookies: {len(pairs)} distinct entries of up to {MAX_CHARS} characters in "
                        f"{len(kept)} languages ({', '.join(f'{k} {counts[k]}' for k in kept)})")


def text_corpus(name: str, texts: list[str], labels: list[str], classes: list[str], source: str,
                description: str) -> TextCorpus:
    """A corpus from texts and their class names (deduplicated here)."""
    texts, labels = dedupe(texts, labels)
    if len(set(labels)) < 2:
        raise ValueError(f"{name}: expected texts of at least 2 classes, found {sorted(set(labels))}")
    index = {c: i for i, c in enumerate(classes)}
    return TextCorpus(name, texts, np.array([index[lab] for lab in labels], dtype=np.int64), list(classes), source,
                      description)


def read_text_folder(path: Path) -> TextCorpus:
    """A folder with one sub-folder of .txt files per class; each file is one sample."""
    path = Path(path)
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and any(d.glob("*.txt")))
    if len(classes) < 2:
        raise ValueError(f"{path}: expected at least 2 sub-folders of .txt files (one per class), found {classes}")
    texts, labels = [], []
    for label in classes:
        for file in sorted((path / label).glob("*.txt")):
            try:
                text = normalize(file.read_text(encoding="utf-8"))
            except UnicodeDecodeError as exc:
                raise ValueError(f"{file}: is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if text:
                texts.append(text)
                labels.append(label)
    name = f"{path.name or path.resolve().name or 'data'}/"
    return text_corpus(name, texts, labels, classes, "folder",
                        f"{len(texts)} texts in {len(classes)} class folders of {name}")


def read_text_csv(path: Path, text: str, target: str) -> TextCorpus:
    """A CSV with a text column (data.text) and a class column (data.target)."""
    from training.datafiles import DataFileError, _column_index, _read_csv

    p, header, rows = _read_csv(path)
    t, y = _column_index(p, header, text, "text"), _column_index(p, header, target, "target")
    pairs = [(normalize(fields[t]), fields[y].strip()) for _, fields in rows]
    pairs = [(x, lab) for x, lab in pairs if x]
    if not pairs:
        raise DataFileError(f"{p}: column {text!r} holds no text")
    classes = sorted({lab for _, lab in pairs})
    return text_corpus(p.name, [x for x, _ in pairs], [lab for _, lab in pairs], classes, "file",
                        f"{p.name}: texts of column {text!r}, classes of column {target!r}")


TEXT_DATASETS = ("fortunes",)  # bundled; it installs system packages, so `python -m training list` leaves it out


def is_text_source(name: str, options: dict) -> bool:
    """Whether a dataset name is text: `fortunes`, a CSV given data.text, or a folder of class folders of .txt."""
    path = Path(name)
    return name in TEXT_DATASETS or (path.suffix.lower() == ".csv" and "text" in options) or \
        (path.is_dir() and any(path.glob("*/*.txt")))


def load_corpus(name: str, options: dict) -> TextCorpus:
    """The text corpus a dataset name stands for (see `is_text_source`)."""
    if name in TEXT_DATASETS:
        return fortunes()
    if Path(name).suffix.lower() == ".csv":
        return read_text_csv(Path(name), options["text"], options.get("target", "target"))
    return read_text_folder(Path(name))
