"""The production server: gunicorn with threaded workers running the Flask app."""

from __future__ import annotations

import logging

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import TConn, ThreadWorker
from prometheus_client import multiprocess

from service.control import Control
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


class Server(BaseApplication):
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
            "proc_name": "nnserve",
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        # Imported in the worker, after the fork: onnxruntime loaded in the master makes every forked worker
        # abort (SIGABRT) when it exits.
        from service.app import create_app

        return create_app(self.settings)


def run(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    access = logging.getLogger("nnserve.access")  # request lines are JSON already: no prefix
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
    Server(settings).run()
