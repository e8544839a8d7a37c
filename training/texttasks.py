"""The architectures that take strings, each trained and published by its own modules: arch -> its fit and publish
functions (imported when used, so that choosing one never loads the others)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Callable

# arch -> its task, and its fit and publish functions as "module:function"
TEXT_ARCHS = {
    "text-transformer": {"task": "multiclass", "fit": "training.textfit:fit_text",
                         "publish": "training.textexport:publish_text_run"},
    "char-lstm": {"task": "generation", "fit": "training.textgen:fit_writer",
                  "publish": "training.textgen_export:publish_writer_run"},
}


def _load(path: str) -> Callable:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def text_fit(arch: str) -> Callable | None:
    """fit(config, out, log=, quiet=) -> runs.Summary for a text architecture; None for any other."""
    return _load(TEXT_ARCHS[arch]["fit"]) if arch in TEXT_ARCHS else None


def text_publish(arch: str) -> Callable | None:
    """publish(run_dir, name, models_dir, log) -> (version, path) for a text architecture; None for any other."""
    return _load(TEXT_ARCHS[arch]["publish"]) if arch in TEXT_ARCHS else None


def run_arch(run_dir: Path) -> str | None:
    """The architecture a finished run was trained with (its config.json), None when it has no config.json."""
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()).get("arch") if path.exists() else None
