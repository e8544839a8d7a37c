"""`python -m service`: run the V2 server (granian or gunicorn workers) on the model repository."""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from service.settings import DEVICES, SERVERS, Settings  # no prometheus_client: safe before its folder is set


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__,
                                     epilog="Every option can also be set as NNSERVE_<OPTION> in the environment.")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8080)")
    parser.add_argument("--grpc-port", type=int, help="port of the gRPC endpoint (default 8081; 0 turns it off)")
    parser.add_argument("--grpc-host", help="address of the gRPC endpoint (default: the HTTP host)")
    parser.add_argument("--grpc-frontend", choices=["auto", "nginx", "python"],
                        help="what listens on the gRPC port: nginx in front of the workers, grpcio alone (python), "
                             "or auto: nginx when installed (default)")
    parser.add_argument("--models", type=Path, help="model repository folder (default models)")
    parser.add_argument("--server", choices=SERVERS, help="HTTP server (default granian)")
    parser.add_argument("--workers", type=int, help="worker processes (default: one per available CPU)")
    parser.add_argument("--threads", type=int, help="request threads per worker (default 8)")
    parser.add_argument("--version-policy", help="'all' (default), 'latest' (the highest) or 'latest:N'")
    parser.add_argument("--no-dynamic-batching", dest="dynamic_batching", action="store_false", default=None,
                        help="run every request on its own, whatever config.pbtxt says")
    parser.add_argument("--device", choices=DEVICES, help="ONNX Runtime device (default auto)")
    parser.add_argument("--ort-threads", type=int, help="ONNX Runtime threads per session (default: CPUs/workers)")
    parser.add_argument("--max-body-bytes", type=int, help="largest request body accepted (default 16 MiB)")
    parser.add_argument("--max-batch-size", help="largest batch in one request: N, optionally followed by "
                        "per-model overrides such as 256,digits-cnn=64 (default 256)")
    parser.add_argument("--default-max-batch-size", type=int, help="max_batch_size that auto-complete gives a model "
                        "that can batch when its config.pbtxt gives none (default 4, Triton's)")
    parser.add_argument("--max-model-bytes", type=int, help="largest size a model's stored tensors may declare; "
                        "larger models are refused before loading (default 4 GiB)")
    parser.add_argument("--share-weights-bytes", type=int, help="models whose stored tensors declare at least this "
                        "many bytes run from memory-mapped weights the workers share (default 64 MiB; 0 = never)")
    parser.add_argument("--max-sequences", type=int, help="live sequences a stateful model version keeps at most "
                        "(default 1024); a sequence start beyond them gets 503")
    parser.add_argument("--poll-seconds", type=float, help="hot reload: rescan the repository this often for new "
                        "versions (default 5; 0 = only on load calls)")
    parser.add_argument("--access-log", action="store_true", default=None,
                        help="log one JSON line per request (default off)")
    parser.add_argument("--log-level", help="debug, info, warning or error (default info)")
    return parser.parse_args(argv)


def remove_at_exit(path: str) -> None:
    """Delete `path` when this process exits, but not when a forked worker (which inherits atexit) does."""
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))


def prepare_multiprocess_dir() -> str:
    """Give prometheus-client a fresh folder for the workers' metric files, before it is imported."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        for entry in Path(path).glob("*.db"):  # stale files of an earlier run would be summed in
            entry.unlink()
    else:
        path = tempfile.mkdtemp(prefix="nnserve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        remove_at_exit(path)
    return path


def check_grpc_port(settings: Settings) -> None:
    """Fail at once when the gRPC port cannot be bound, rather than in every worker after the fork (where gRPC
    starts: its objects do not survive a fork). The workers bind it with SO_REUSEPORT, so this test does too."""
    host = settings.grpc_host or settings.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, settings.grpc_port))
        except OSError as exc:
            raise SystemExit(f"python -m service: cannot listen for gRPC on {settings.grpc_address}: "
                             f"{exc.strerror}; set --grpc-port (0 turns gRPC off)") from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    prepare_multiprocess_dir()
    from service.server import run  # imports prometheus_client, so only after the folder is set

    try:
        settings = Settings.from_env(**{k: v for k, v in vars(args).items()})
    except ValueError as exc:
        raise SystemExit(f"python -m service: {exc}") from None
    if not settings.models.is_dir():
        raise SystemExit(f"python -m service: model repository {settings.models} is not a folder")
    if settings.device == "cuda":  # asked in a child: onnxruntime must not be imported before the server forks
        providers = subprocess.run([sys.executable, "-c", "import onnxruntime; print(*onnxruntime.get_available_providers())"],
                                   capture_output=True, text=True).stdout.split()
        if "CUDAExecutionProvider" not in providers:
            raise SystemExit(f"python -m service: device 'cuda' was asked for, but this ONNX Runtime offers only "
                             f"{providers}; install onnxruntime-gpu with its CUDA libraries, or use --device auto or cpu")
    if settings.grpc_port:
        check_grpc_port(settings)
    if not settings.state_dir:  # shared by the workers for load/unload calls and statistics
        settings.state_dir = tempfile.mkdtemp(prefix="nnserve-state-")
        remove_at_exit(settings.state_dir)
    else:  # the statistics extension counts from this start, as Triton's do
        shutil.rmtree(Path(settings.state_dir) / "stats", ignore_errors=True)
    run(settings)


if __name__ == "__main__":
    main()
