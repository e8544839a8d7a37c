"""ONNX Runtime sessions: the providers for a device, the session options, and weights shared by the workers."""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path

import onnxruntime as ort

from service import onnxfile
from service.errors import LoadError

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
SHARED_TENSOR_BYTES = 1 << 20
"""With shared weights, the initializers of at least this size go to the memory-mapped file; smaller ones stay."""


def select_providers(device: str) -> list[str]:
    """ONNX Runtime providers for a device setting ('auto' picks CUDA when the installed build has it)."""
    if device == "cpu":
        return [PROVIDERS["cpu"]]
    if device == "cuda" or PROVIDERS["cuda"] in ort.get_available_providers():
        _preload_cuda_libraries()
        return [PROVIDERS["cuda"], PROVIDERS["cpu"]]
    if device == "auto":
        log.debug("device auto: this ONNX Runtime build has no CUDA provider, using the CPU")
    return [PROVIDERS["cpu"]]


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip installed (onnxruntime-gpu's `cuda` and `cudnn` extras, the
    `nvidia-*` wheels) before the first CUDA session: the dynamic loader does not look in site-packages, and without
    them ONNX Runtime falls back to the CPU. Libraries on the loader's path (a CUDA base image) need nothing."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu only
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # a library missing here is reported by the session's providers, with the device check
        log.warning("onnxruntime.preload_dlls(): %s", exc)


def shared_weights_copy(data: bytes, path: Path, cache: Path) -> Path:
    """The model file with its big initializers moved to external data, made once per machine under `cache` (the
    first worker to get there writes it under a lock; the others wait and use it). Copies of earlier files of the
    same version are removed: a worker still mapping one keeps its pages until it lets go."""
    stat = path.stat()
    version_dir = path.parent
    prefix = f"{version_dir.parent.name}-{version_dir.name}-"
    folder = cache / f"{prefix}{stat.st_size}-{stat.st_mtime_ns}"
    if not (folder / "model.onnx").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / f"{folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (folder / "model.onnx").is_file():
                for old in cache.glob(f"{prefix}*"):
                    if old.is_dir() and old != folder:
                        shutil.rmtree(old, ignore_errors=True)
                work = Path(tempfile.mkdtemp(dir=cache, prefix=".tmp-"))
                onnxfile.externalize(data, work, SHARED_TENSOR_BYTES)
                os.rename(work, folder)
    return folder / "model.onnx"


def build_session(data: bytes, path: Path, facts: onnxfile.ModelFacts, device: str, threads: int,
                  share_weights_bytes: int, weights_cache: Path | None) -> tuple[ort.InferenceSession, bool]:
    """The session of a checked model file, and whether it runs from weights the workers share.

    A model whose stored tensors declare at least `share_weights_bytes` (0: never) runs on the CPU from
    memory-mapped weights: from its own external data, or from a copy made under `weights_cache`; ONNX Runtime's
    weight prepacking, which would copy them per process, is off for it. Raises LoadError."""
    version_dir = path.parent
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = select_providers(device)
    source = str(path) if facts.external else data  # from the path when weights live beside it (checked before)
    shared = (share_weights_bytes > 0 and facts.tensor_bytes >= share_weights_bytes
              and PROVIDERS["cuda"] not in providers)  # on a GPU the weights are copied to its memory anyway
    if shared:
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.enable_cpu_mem_arena = False  # a big model's activations are allocated per run, not kept pooled
        if not facts.external and weights_cache is not None:
            try:
                source = str(shared_weights_copy(data, path, weights_cache))
            except OSError as exc:  # no room for the copy: serve it unshared rather than not at all
                log.warning("%s version %s: cannot write its shared weights (%s); each worker holds its own copy",
                            version_dir.parent.name, version_dir.name, exc)
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises several types for a bad graph
        message = str(exc).replace(str(version_dir), "<version>")[:300]
        raise LoadError(f"ONNX Runtime cannot load {path.name}: {message}") from None
    active = session.get_providers()
    if device == "cuda" and PROVIDERS["cuda"] not in active:
        # ONNX Runtime falls back to CPU silently when CUDA libraries are missing.
        raise LoadError(f"device 'cuda' was asked for but ONNX Runtime runs on {active}")
    return session, shared
