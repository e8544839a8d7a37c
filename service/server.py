"""The production servers: granian (the default, chosen by measurement: docs/performance.md) or gunicorn.

Either runs worker processes that each build their own app (and ONNX Runtime sessions) after the fork:
onnxruntime loaded in the master makes every forked worker abort (SIGABRT) when it exits.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from functools import partial
from pathlib import Path

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import TConn, ThreadWorker
from prometheus_client import multiprocess

from service.control import Control
from service.grpc_frontend import Frontend, resolve
from service.settings import Settings


def _child_exit(server, worker) -> None:
    # Drop the live gauges of a worker that is gone, so they stop counting in /metrics, and its acknowledgements.
    multiprocess.mark_process_dead(worker.pid)
    if worker.app.settings.state_dir:
        Control(worker.app.settings.state_dir).forget(worker.pid)


class DrainingThreadWorker(ThreadWorker):
    """gunicorn's threaded worker, with a shutdown that loses no connection a client already made.

    On SIGTERM the stock worker stops accepting but keeps its listening socket open until its requests finish;
    meanwhile the kernel completes new handshakes into a backlog nobody reads, and resets them at the end: a
    client that connected and sent its request gets a reset (13 in a test with 8 busy clients). This worker
    accepts (and serves) what is already queued, then closes the listener at once, so later clients are refused
    before they send anything. What remains is TCP's own race: a handshake completed between the last accept
    and the close (0 or 1 in that test); for a rollout with no loss, fail readiness before SIGTERM.
    """

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if enabled or self.alive:
            return
        for listener in self.sockets:
            while True:
                try:
                    client, address = listener.accept()
                except OSError:  # EAGAIN: the backlog is empty (or the socket is gone)
                    break
                client.setblocking(True)
                self.nr_conns += 1
                self.enqueue_req(TConn(self.cfg, client, address, listener.getsockname()))
            listener.close()


class GunicornServer(BaseApplication):
    """gunicorn configured from Settings; each worker builds its own app and ONNX Runtime sessions."""

    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        host = f"[{s.host}]" if ":" in s.host else s.host
        options = {
            "bind": f"{host}:{s.port}",
            "workers": s.worker_count,
            "threads": s.threads,
            "worker_class": "service.server.DrainingThreadWorker",
            "timeout": 60,
            "graceful_timeout": 30,  # on SIGTERM, in-flight requests get this long to finish
            "keepalive": 5,
            "loglevel": s.log_level,
            "child_exit": _child_exit,
            "post_fork": lambda server, worker: die_with_parent(worker.ppid),
            "proc_name": "nnserve",
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        from service.app import create_app  # in the worker, after the fork

        return create_app(self.settings, serve_grpc=True)


PR_SET_PDEATHSIG = 1


def forget_dead_workers(settings: Settings) -> None:
    """At a worker's start: drop the live gauges and load acknowledgements of worker processes that are gone.

    gunicorn reports a dead worker to `_child_exit`; granian has no such hook, so a (re)started worker cleans
    up after the ones before it.
    """
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    pids = set()
    if folder:
        for entry in Path(folder).glob("gauge_live*_*.db"):
            pid = entry.stem.rpartition("_")[2]
            if pid.isdigit():
                pids.add(int(pid))
    for pid in pids:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid)
            if settings.state_dir:
                Control(settings.state_dir).forget(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(master: int) -> None:
    """Have the kernel kill this worker if the master (pid `master`) dies (Linux), so no orphan keeps the port.

    A SIGTERM that reaches the master while a worker is still loading its models can end the master first;
    without this the worker would go on serving alone. (In a container the master is pid 1: compare pids.)
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != master:  # the master is already gone
        os._exit(1)


def _granian_app(target: str, settings: Settings, master: int):
    """granian's target loader, called in each worker after the fork."""
    die_with_parent(master)
    # Until granian installs the worker's own handlers (after this returns), SIGTERM would reach the master's
    # handler inherited through the fork and be lost, leaving the worker running until the kill timeout. A worker
    # still starting has no request in flight: it may just go.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    from service.app import create_app

    forget_dead_workers(settings)
    return create_app(settings, serve_grpc=True)


def run_granian(settings: Settings) -> None:
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server as Granian

    server = Granian(
        "service.app:create_app",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.WSGI,
        workers=settings.worker_count,
        blocking_threads=settings.threads,
        backlog=2048,
        loop=Loops.asyncio,
        log_level=LogLevels(settings.log_level.lower()),
        workers_kill_timeout=30,  # on SIGTERM, in-flight requests get this long to finish
        respawn_failed_workers=True,
        websockets=False,
    )
    logging.getLogger("_granian").addFilter(_ThreadCountNotice())
    server.serve(target_loader=partial(_granian_app, settings=settings, master=os.getpid()))


class _ThreadCountNotice(logging.Filter):
    """Drops granian's warning that more blocking threads than 2 x CPUs + 1 "seems quite high".

    The count is nnserve's `--threads` (8 by default, chosen by measurement: docs/performance.md). A request thread
    mostly waits, in ONNX Runtime (which releases the GIL) or in the dynamic batcher, whose batches can only be as
    large as the requests waiting; a warning on every start that names no setting of nnserve helps no one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Configuration allows spawning up to")


def preload() -> None:
    """Import in the master what every worker imports, but ONNX Runtime (whose forked copies abort at exit), so the
    forked workers share those pages instead of each building its own; gc.freeze keeps the collector from
    touching (and so copying) them."""
    import gc

    import flask  # noqa: F401
    import numpy  # noqa: F401
    import orjson  # noqa: F401

    import service.autocomplete  # noqa: F401
    import service.batching  # noqa: F401
    import service.checks  # noqa: F401
    import service.compression  # noqa: F401
    import service.metrics  # noqa: F401
    import service.onnxfile  # noqa: F401
    import service.protocol  # noqa: F401
    import service.statistics  # noqa: F401
    import service.warmup  # noqa: F401
    gc.freeze()


def run(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    access = logging.getLogger("nnserve.access")  # request lines are JSON already: no prefix
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
    access.setLevel(logging.INFO if settings.access_log else logging.WARNING)
    binary = resolve(settings)
    frontend = Frontend(binary, settings).start() if binary else None
    preload()
    try:
        if settings.server == "granian":
            run_granian(settings)
        else:
            GunicornServer(settings).run()
    finally:  # after the workers drained: nginx relayed the answers to the calls they had in flight
        if frontend is not None:
            frontend.stop()
