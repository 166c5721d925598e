"""``oliai-bridge dev``: the whole bridge in one command, for a first try and for development.

Starts, as child processes of this one: an embedded Redis when ``REDIS_URL`` is unset, the OliAI
sandbox when no API key is configured, the web app under gunicorn, and one worker with the
scheduler. Ctrl-C (or SIGTERM) stops them in order, web and worker first and Redis last; they
also die with this process.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

from bridge import defaults
from bridge.config import DEMO_CONFIG, Settings, config_exists
from bridge.processes import Children, StartFailed, wait_for_line, wait_for_port
from bridge.storage import EmbeddedRedis, free_port


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Dev:
    def __init__(self, args):
        self.args = args
        self.env = dict(os.environ)
        # Text lines for the person at the terminal, unless LOG_FORMAT asks otherwise.
        self.env.setdefault("LOG_FORMAT", defaults.DEV_LOG_FORMAT)
        self.children = Children(env=self.env)  # their output is this terminal's
        self.redis: EmbeddedRedis | None = None
        self.stopping = False

    def settings(self) -> Settings:
        if self.args.config:
            self.env["BRIDGE_CONFIG"] = self.args.config
        if not config_exists(self.env):
            data_dir = Path(self.args.data_dir or defaults.DATA_DIR)
            data_dir.mkdir(parents=True, exist_ok=True)
            path = data_dir / "demo-config.toml"
            path.write_text(DEMO_CONFIG)
            self.env["BRIDGE_CONFIG"] = str(path.resolve())
            print(f"no config.toml here: using the built-in demo route ({path})")
        from bridge.config import load_settings

        return load_settings(env=self.env)

    def start_sandbox(self) -> str:
        from sandbox import DEMO_KEY

        port = self.args.sandbox_port if port_free(self.args.sandbox_port) else free_port()
        proc = self.children.spawn(
            "sandbox", "-m", "sandbox", "--port", str(port), "--keys", DEMO_KEY, pipe_stdout=True
        )
        try:
            url = wait_for_line(proc, r"http://\S+/v1", timeout=15, echo=sys.stdout).group(0)
        except StartFailed as exc:
            raise RuntimeError(f"the OliAI sandbox did not start: {exc}") from None
        self.env["OLIAI_BASE_URL"] = url
        self.env["OLIAI_API_KEY"] = DEMO_KEY
        return url

    def run(self) -> int:
        # Also SIGINT explicitly: a shell that starts us in the background ignores it, and
        # Python then never raises KeyboardInterrupt. The children run in process groups of
        # their own, so a terminal's Ctrl-C reaches only this process, which stops them in order.
        signal.signal(signal.SIGTERM, lambda *_: self.stop_signal())
        signal.signal(signal.SIGINT, lambda *_: self.stop_signal())
        try:
            settings = self.settings()
            data_dir = Path(self.args.data_dir or settings.data_dir)
            if not self.env.get("REDIS_URL"):
                self.redis = EmbeddedRedis(data_dir / "redis")
                url = self.redis.start()
                self.env["REDIS_URL"] = url
                (data_dir / "redis.url").write_text(url)
                print(f"embedded Redis: {url} (data in {self.redis.data_dir})")
            sandbox_url = None
            if not settings.oliai.api_key:
                sandbox_url = self.start_sandbox()
                print(f"OliAI sandbox: {sandbox_url} (no OLIAI_API_KEY configured)")
            port = self.args.port or int(self.env.get("PORT") or defaults.PORT)
            web = ["web", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            self.children.spawn("web", "-m", "bridge", *web)
            self.children.spawn("worker", "-m", "bridge", "worker")
            try:
                wait_for_port(port, timeout=20, watch=self.children)
            except StartFailed as exc:
                raise RuntimeError(f"the web process did not start: {exc}") from None
            self.banner(settings, port, sandbox_url)
            return self.supervise()
        except KeyboardInterrupt:
            return 0
        finally:
            self.stop()

    def banner(self, settings: Settings, port: int, sandbox_url: str | None) -> None:
        base = f"http://127.0.0.1:{port}"
        route = next(iter(settings.routes.values()), None)
        lines = ["", "oliai-bridge is running. Ctrl-C stops everything.", ""]
        for r in settings.routes.values():
            lines.append(f"  hook: {base}/hooks/{r.name}   (source {r.source})")
        if route is not None:
            token = " -H 'X-Bridge-Token: <your token>'" if route.token else ""
            lines += [
                "",
                "Post a sample lead:",
                f"  curl -sS -X POST {base}/hooks/{route.name}{token} \\",
                "       -H 'Content-Type: application/json' \\",
                '       -d \'{"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}\'',
                "The answer has a deliveryId; follow it with:",
                f"  curl -sS {base}/deliveries/<deliveryId>",
            ]
        if sandbox_url:
            from sandbox import DEMO_KEY

            lines += [
                "",
                "See the contact in the sandbox:",
                f"  curl -sS -H 'x-api-key: {DEMO_KEY}' '{sandbox_url}/contacts?search=%2B91'",
            ]
        lines += ["", f"Health: {base}/healthz   Metrics: {base}/metrics", ""]
        print("\n".join(lines), flush=True)

    def supervise(self) -> int:
        while not self.stopping:
            exited = self.children.exited()
            if exited is not None:
                name, status = exited
                print(f"oliai-bridge dev: {name} exited with {status}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.3)
        return 0

    def stop_signal(self) -> None:
        if self.stopping:  # already stopping: a second Ctrl-C must not cut the clean-up short
            return
        self.stopping = True
        raise KeyboardInterrupt

    def stop(self) -> None:
        """Worker and web first (they use Redis), then the sandbox, then Redis."""
        self.stopping = True
        self.children.stop_all()
        if self.redis is not None:
            self.redis.stop()
            marker = self.redis.data_dir.parent / "redis.url"
            marker.unlink(missing_ok=True)


def run_dev(args) -> int:
    return Dev(args).run()
