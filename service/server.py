"""The production server: gunicorn with threaded workers running the Flask app."""

from __future__ import annotations

import logging

from gunicorn.app.base import BaseApplication
from prometheus_client import multiprocess

from service.app import create_app
from service.control import Control
from service.settings import Settings


def _child_exit(server, worker) -> None:
    # Drop the live gauges of a worker that is gone, so they stop counting in /metrics, and its acknowledgements.
    multiprocess.mark_process_dead(worker.pid)
    if worker.app.settings.state_dir:
        Control(worker.app.settings.state_dir).forget(worker.pid)


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
            "worker_class": "gthread",
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
        return create_app(self.settings)


def run(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    Server(settings).run()
