"""Service settings: one dataclass, defaults overridden by NNSERVE_* environment variables, then the CLI."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

ENV_PREFIX = "NNSERVE_"
DEVICES = ("auto", "cpu", "cuda")
SERVERS = ("granian", "gunicorn")
GRPC_FRONTENDS = ("auto", "nginx", "python")


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota when one is set."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


@dataclass
class Settings:
    """Everything the service can be told. Field docs are the settings' documentation."""

    models: Path = Path("models")
    """Model repository in Triton's layout: <models>/<name>/[config.pbtxt] and <models>/<name>/<version>/model.onnx
    (with nnserve's optional metadata.json beside it)."""
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8080
    """Port to listen on."""
    grpc_port: int = 8081
    """Port of the gRPC endpoint (Triton's GRPCInferenceService); 0 turns it off."""
    grpc_host: str = ""
    """Address of the gRPC endpoint; empty = the HTTP host."""
    grpc_frontend: str = "auto"
    """What listens on the gRPC port: nginx (ModelInfer answered by the HTTP workers' fast path, the other RPCs by
    grpcio; about three times as fast), python (grpcio alone), or auto (nginx when it is installed)."""
    server: str = "granian"
    """HTTP server: granian (Rust HTTP, measured fastest: docs/performance.md) or gunicorn (gthread workers)."""
    workers: int = 0
    """Server worker processes; 0 = one per available CPU."""
    threads: int = 8
    """Request threads per worker (granian's blocking threads, gunicorn's gthread threads)."""
    version_policy: str = "all"
    """Which versions to serve of a model whose config.pbtxt has no version_policy: 'all', or 'latest[:N]' (the N
    highest, default 1); requests without a version get the highest. 'all' by default (Triton's is 'latest'), so
    that a freshly published version serves beside the one before it."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body accepted; bigger bodies get 413."""
    max_batch_size: str = "256"
    """The operator's cap on the batch one request may carry, below each model's own max_batch_size: a number for
    every model, then optional per-model overrides, e.g. '256,digits-cnn=64,co2-lstm=32' (256 is the
    max_batch_size of the config.pbtxt that export writes)."""
    default_max_batch_size: int = 4
    """The max_batch_size auto-complete gives a model that can batch when its config.pbtxt gives none (Triton's
    default-max-batch-size)."""
    max_model_bytes: int = 4 << 30
    """Largest size a model's stored tensors (initializers, in the file or as external data) may declare; a
    larger model is refused before ONNX Runtime allocates anything."""
    share_weights_bytes: int = 64 << 20
    """A model whose stored tensors declare at least this many bytes runs on the CPU from memory-mapped weights that
    the worker processes share (its memory counts once, not once per worker), with ONNX Runtime's weight prepacking
    off; 0 = never."""
    max_sequences: int = 1024
    """Live sequences a stateful model version (config.pbtxt's sequence_batching) keeps at most; a sequence start
    beyond them gets 503. Their states are shared by the workers through the state folder."""
    dynamic_batching: bool = True
    """Batch concurrent requests per model version as its config.pbtxt's dynamic_batching block says (off: every
    request runs on its own)."""
    device: str = "auto"
    """ONNX Runtime device: auto (CUDA when available, else CPU), cpu, or cuda (refuse to start without it)."""
    ort_threads: int = 0
    """ONNX Runtime intra-op threads per session; 0 = available CPUs divided by workers."""
    background_load: bool = True
    """Load models in a background thread so liveness answers at once; readiness is 503 until done."""
    startup_wait_seconds: int = 30
    """How long a request that arrives while its worker is still loading waits before a 503; also how long a
    load call waits for the other workers to apply it."""
    poll_seconds: float = 5.0
    """Hot reload: rescan the repository this often and load new complete versions (0 = only on load calls)."""
    repository_token: str = ""
    """Bearer token for the repository extension (index, load, unload); empty = those calls are refused."""
    state_dir: str = ""
    """Folder shared by the workers for load/unload calls; `python -m service` makes one (empty = one process)."""
    log_level: str = "info"
    """Log level of the server."""
    access_log: bool = False
    """Log one JSON line per request (request id, route, status, model, version, duration). Off by default, as in
    gunicorn and Triton: at thousands of requests per second it costs a fifth of the CPU; metrics count everything."""
    extra: dict = field(default_factory=dict)
    """Free-form overrides for tests (kept out of the environment)."""

    def __post_init__(self) -> None:
        self.models = Path(self.models)
        self.repository_token = self.repository_token.strip()  # a secret file's trailing newline is not part of it
        if self.server not in SERVERS:
            raise ValueError(f"server: expected one of {list(SERVERS)}, got {self.server!r}")
        if self.grpc_frontend not in GRPC_FRONTENDS:
            raise ValueError(f"grpc_frontend: expected one of {list(GRPC_FRONTENDS)}, got {self.grpc_frontend!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device: expected one of {list(DEVICES)}, got {self.device!r}")
        self.parse_version_policy()  # fail fast on a bad value
        if self.poll_seconds < 0:
            raise ValueError(f"poll_seconds: expected 0 or more, got {self.poll_seconds}")
        self._parse_batch_limits()
        if not 0 <= self.grpc_port < 65536:
            raise ValueError(f"grpc_port: expected 0 (off) to 65535, got {self.grpc_port}")
        if self.share_weights_bytes < 0:
            raise ValueError(f"share_weights_bytes: expected 0 (never) or more, got {self.share_weights_bytes}")
        for name in ("port", "threads", "max_body_bytes", "default_max_batch_size", "max_model_bytes",
                     "max_sequences"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")

    def parse_version_policy(self) -> int | None:
        """The number of latest versions to serve, or None for all."""
        policy = self.version_policy
        if policy == "all":
            return None
        kind, _, n = policy.partition(":")
        if kind == "latest" and (n == "" or (n.isdigit() and int(n) > 0)):
            return int(n or 1)  # plain 'latest' is Triton's default policy: the single highest version
        raise ValueError(f"version_policy: expected 'all', 'latest' or 'latest:N' with N >= 1, got {policy!r}")

    def version_policy_config(self) -> dict:
        """The version policy setting as config.pbtxt's version_policy block."""
        count = self.parse_version_policy()
        return {"all": {}} if count is None else {"latest": {"num_versions": count}}

    def batch_limit(self, model: str) -> int:
        """The largest batch one request to `model` may carry."""
        return self._batch_limits.get(model, self._batch_default)

    def _parse_batch_limits(self) -> None:
        """Parse max_batch_size once ('N' or 'N,model=M,...'), so a request only looks its model up."""
        default, *overrides = str(self.max_batch_size).split(",")
        limits = {}
        for item in overrides:
            name, sep, value = item.partition("=")
            if not sep or not value.strip().isdigit() or int(value) < 1:
                raise ValueError(f"max_batch_size: expected 'N' or 'N,model=M,...' with positive numbers, "
                                 f"got {self.max_batch_size!r}")
            limits[name.strip()] = int(value)
        if not default.strip().isdigit() or int(default) < 1:
            raise ValueError(f"max_batch_size: expected a positive number first, got {self.max_batch_size!r}")
        self._batch_default, self._batch_limits = int(default), limits

    @property
    def grpc_address(self) -> str:
        host = self.grpc_host or self.host
        return f"[{host}]:{self.grpc_port}" if ":" in host else f"{host}:{self.grpc_port}"

    @property
    def worker_count(self) -> int:
        return self.workers or available_cpus()

    @property
    def session_threads(self) -> int:
        return self.ort_threads or max(1, available_cpus() // self.worker_count)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Defaults, then NNSERVE_<FIELD> variables, then keyword overrides (None values are ignored)."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None or f.name == "extra":
                continue
            default = f.default
            if isinstance(default, bool):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(default, float):
                try:
                    values[f.name] = float(raw)
                except ValueError:
                    raise ValueError(f"{ENV_PREFIX}{f.name.upper()}: expected a number, got {raw!r}") from None
            elif isinstance(default, int):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ValueError(f"{ENV_PREFIX}{f.name.upper()}: expected an integer, got {raw!r}") from None
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
