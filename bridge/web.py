"""``oliai-bridge web``: the Flask app under gunicorn, started in-process (no ``gunicorn`` on PATH
needed), binding ``$PORT`` with ``$WEB_CONCURRENCY`` worker processes."""

from __future__ import annotations

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from bridge.settings import Settings


class GunicornLogger(glogging.Logger):
    """gunicorn's own lines through the process's one handler (``bridge.logs``), so they are
    JSON like the rest. The access log is the app's (``http.request``, with the request id)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True


class BridgeWeb(BaseApplication):
    def __init__(self, settings: Settings, options: dict):
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self):
        from bridge.app import create_app

        # Runs in each gunicorn worker after the fork: each gets its own Redis connections.
        return create_app(self.settings)


def run_web(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int,
    threads: int = 4,
) -> None:
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        # A request never waits on OliAI, only on Redis: 30 s is generous.
        "timeout": 30,
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": None,  # the app logs each request (bridge.app: event http.request)
        "errorlog": "-",
        "logger_class": GunicornLogger,
        "loglevel": settings.log_level.lower(),
        "proc_name": "oliai-bridge-web",
        "forwarded_allow_ips": "*",
    }
    BridgeWeb(settings, options).run()
