"""nginx in front of the gRPC port: ModelInfer goes to the HTTP workers, everything else to Python gRPC.

A Python gRPC server (grpcio) spends about 470 µs of CPU on a ModelInfer call that granian's HTTP path answers in
about 115 (docs/grpc.md). So when nginx is installed, `python -m service` runs it on the gRPC port:
- a unary ModelInfer call is proxied, as one HTTP/1.1 POST of its gRPC message, to the HTTP workers' fast path
  (service/fastpath.py, service/grpc_proxied.py), which answers the gRPC message with its status in two headers
  that nginx sends as the call's trailers;
- every other RPC, streams included, is proxied as gRPC (`grpc_pass`) to the workers' grpcio servers, which
  listen on a loopback port of their own.

The proxied POST carries a per-start secret header, so the HTTP port answers it only from this nginx. nginx runs
as one process (`master_process off`), a child of the server's master that the kernel kills if the master dies,
and restarted if it exits on its own. On SIGTERM the workers drain first, answering through nginx the calls they
hold; nginx stops after them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from service.settings import Settings

log = logging.getLogger(__name__)

ENV = "NNSERVE_GRPC_UPSTREAM"
"""Set by `python -m service` for its workers when nginx fronts gRPC: '<address of the grpcio servers> <secret>'."""
SECRET_HEADER = "X-Nnserve-Grpc"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


@dataclass(frozen=True)
class Upstream:
    """What a worker needs when nginx fronts gRPC: where its grpcio server listens, and the proxied POST's
    secret."""

    grpc_address: str
    secret: str

    @classmethod
    def from_env(cls) -> "Upstream | None":
        value = os.environ.get(ENV, "")
        address, _, secret = value.partition(" ")
        return cls(address, secret) if address and secret else None


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in NGINX_PATHS if os.access(p, os.X_OK)), None)


def resolve(settings: Settings) -> str | None:
    """The nginx binary to front gRPC with, or None for grpcio alone; raises SystemExit when `nginx` was asked
    for and is not installed."""
    if not settings.grpc_port or settings.grpc_frontend == "python":
        return None
    binary = find_nginx()
    if binary is None and settings.grpc_frontend == "nginx":
        raise SystemExit("python -m service: --grpc-frontend nginx was asked for, but no nginx is installed; "
                         "install it (apt-get install nginx) or use --grpc-frontend auto or python")
    if binary is None:
        log.warning("nginx is not installed: grpcio alone serves gRPC, at about a third of the speed nginx in "
                    "front gives (docs/grpc.md); apt-get install nginx to have it")
    return binary


def _loopback(host: str) -> str:
    """An address the proxy can reach a listener on `host` at."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def nginx_config(settings: Settings, upstream: Upstream, folder: Path) -> str:
    """nginx's configuration: one process, its temporary files under `folder`, the two upstreams (the HTTP
    workers, the workers' grpcio servers) and the gRPC server block."""
    http = f"{_loopback(settings.host)}:{settings.port}"
    level = "warn" if settings.log_level.lower() == "debug" else "error"  # warn: every body written to a file
    return f"""# Written by nnserve at each start: nginx fronts nnserve's gRPC port (service/grpc_frontend.py).
daemon off;
master_process off;
pid {folder}/nginx.pid;
error_log stderr {level};
events {{ worker_connections 8192; }}
http {{
  access_log off;
  server_tokens off;
  client_body_temp_path {folder}/body;
  proxy_temp_path {folder}/proxy;
  fastcgi_temp_path {folder}/fastcgi;
  uwsgi_temp_path {folder}/uwsgi;
  scgi_temp_path {folder}/scgi;
  client_max_body_size {settings.max_body_bytes + 5};
  client_body_buffer_size 1m;
  keepalive_requests 4294967295;
  keepalive_timeout 3600s;
  http2_max_concurrent_streams 1024;
  upstream nnserve_http {{
    server {http};
    keepalive 256;
    keepalive_requests 4294967295;
    keepalive_timeout 4s;  # under gunicorn's 5 s, so nginx never reuses a connection the worker is closing
  }}
  upstream nnserve_grpc {{
    server {upstream.grpc_address};
    keepalive 64;
  }}
{_server_block(settings, upstream)}}}
"""


def _server_block(settings: Settings, upstream: Upstream) -> str:
    """The gRPC port: ModelInfer to the HTTP workers with the secret header, the rest to grpcio, and gRPC's own
    answer to a message over the size limit."""
    host = settings.grpc_host or settings.host
    listen = f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"
    too_large = (f"received message larger than max ({settings.max_body_bytes} bytes, the server's "
                 "--max-body-bytes)")
    return f"""  server {{
    listen {listen} http2;
    error_page 413 = @too_large;
    location = {MODEL_INFER} {{
      proxy_pass http://nnserve_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header {SECRET_HEADER} {upstream.secret};
      proxy_buffering off;  # the answer streams to the client: no temporary files for big ones
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
      proxy_hide_header X-Grpc-Status;
      proxy_hide_header X-Grpc-Message;
      proxy_hide_header Content-Length;
      add_trailer grpc-status $upstream_http_x_grpc_status always;
      add_trailer grpc-message $upstream_http_x_grpc_message always;
    }}
    location / {{
      grpc_pass grpc://nnserve_grpc;
      grpc_read_timeout 86400s;
      grpc_send_timeout 86400s;
    }}
    location @too_large {{
      default_type application/grpc;
      add_header grpc-status 8 always;
      add_header grpc-message "{too_large}" always;
      return 200;
    }}
  }}
"""


def _prepare_child() -> None:  # in the nginx child, before exec
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # the watcher thread blocks them all
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Frontend:
    """nginx on the gRPC port, a child of this (master) process; restarted if it dies while serving."""

    def __init__(self, binary: str, settings: Settings):
        self.binary, self.settings = binary, settings
        self.folder = Path(settings.state_dir) / "nginx"
        self.upstream = Upstream(f"127.0.0.1:{_free_loopback_port()}", secrets.token_hex(16))
        self.process: subprocess.Popen | None = None
        self.owner = os.getpid()  # gunicorn's workers are forked inside the master's run(), finally clause included
        self._stopping = False
        self._lock = threading.Lock()

    def start(self) -> "Frontend":
        """Write the config, check it with `nginx -t`, start nginx; the workers learn the upstream from ENV."""
        for sub in ("", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        config = self.folder / "nginx.conf"
        config.write_text(nginx_config(self.settings, self.upstream, self.folder))
        test = subprocess.run([self.binary, "-q", "-t", "-e", "stderr", "-p", str(self.folder), "-c", str(config)],
                              capture_output=True, text=True)
        if test.returncode:
            raise SystemExit(f"python -m service: nginx cannot front gRPC on {self.settings.grpc_address}: "
                             f"{test.stderr.strip()[-500:]}")
        os.environ[ENV] = f"{self.upstream.grpc_address} {self.upstream.secret}"
        self._spawn()
        self._wait_listening()
        threading.Thread(target=self._watch, name="nginx-watch", daemon=True).start()
        log.info("gRPC on %s: nginx (%s) in front of the workers", self.settings.grpc_address, self.binary)
        return self

    def _spawn(self) -> None:
        config = self.folder / "nginx.conf"
        self.process = subprocess.Popen([self.binary, "-e", "stderr", "-p", str(self.folder), "-c", str(config)],
                                        stdin=subprocess.DEVNULL, preexec_fn=_prepare_child)

    def _wait_listening(self, timeout: float = 10) -> None:
        host = _loopback(self.settings.grpc_host or self.settings.host).strip("[]")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"python -m service: nginx could not serve gRPC on {self.settings.grpc_address} "
                                 f"(exit code {self.process.returncode}; its reason is above)")
            try:
                socket.create_connection((host, self.settings.grpc_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.process.kill()
        raise SystemExit(f"python -m service: nginx did not listen on {self.settings.grpc_address} in {timeout} s")

    def _watch(self) -> None:
        # Signals are the main thread's business: gunicorn's arbiter waits for them there, and would never see a
        # SIGTERM that the kernel delivered to this thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        while True:
            code = self.process.wait()
            with self._lock:
                if self._stopping:
                    return
                log.error("nginx in front of gRPC exited with code %s; restarting it", code)
                time.sleep(1)
                self._spawn()

    def stop(self) -> None:
        """Stop nginx (once the workers have drained: the answers to the calls in flight went through it)."""
        if os.getpid() != self.owner:
            return
        with self._lock:
            if self._stopping or self.process is None:
                return
            self._stopping = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
