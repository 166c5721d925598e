"""The web apps the ingest benchmark compares, each under the bridge's own gunicorn settings.

``python -m bench.webapps KIND --port P [--workers 2] [--worker-class C]``:

- ``bridge``: ``oliai-bridge web`` itself (``BRIDGE_CONFIG`` and ``REDIS_URL`` from the env);
- ``bare``: a Flask app answering every POST ``202 {"status": "queued"}`` after reading the
  body: the ceiling any Flask app on this server reaches;
- ``lpush``: the same with one Redis ``LPUSH`` of the body: the floor of a webhook receiver that
  stores what it accepts.

``--worker-class`` swaps gunicorn's worker (e.g. ``gthread`` with 4 threads, the server model
before the slow-client change) to compare server models on the same app.
"""

from __future__ import annotations

import argparse
import os

from flask import Flask, jsonify, request

from bridge.web import BridgeWeb, ReadDeadlines, gunicorn_options


def bare_app(redis_url: str | None = None) -> Flask:
    app = Flask("bare")
    redis = None
    if redis_url:
        from redis import Redis

        redis = Redis.from_url(redis_url)

    @app.post("/hooks/<route>")
    def hook(route: str):
        body = request.get_data()
        if redis is not None:
            redis.lpush(f"bench:{route}", body)
        return jsonify(status="queued"), 202

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.webapps")
    parser.add_argument("kind", choices=("bridge", "bare", "lpush"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default=None)
    args = parser.parse_args(argv)

    def load_app():
        if args.kind == "bridge":
            from bridge.app import create_app
            from bridge.config import load_settings

            settings = load_settings()
            app = create_app(settings)
        else:
            settings = None
            app = bare_app(os.environ["REDIS_URL"] if args.kind == "lpush" else None)
        return ReadDeadlines(app, settings.max_body_bytes if settings else 1024 * 1024)

    options = gunicorn_options("127.0.0.1", args.port, args.workers)
    if args.worker_class:
        options["worker_class"] = args.worker_class
        options["threads"] = 4
    options["proc_name"] = f"bench-{args.kind}"
    BridgeWeb(load_app, options).run()


if __name__ == "__main__":
    main()
