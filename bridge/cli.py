"""The ``oliai-bridge`` command: dev, web, worker, sandbox, check-config, try, failed, replay,
import, flows."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import mimetypes
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bridge import defaults, logs
from bridge.config import (
    build_settings,
    config_exists,
    demo_settings_data,
    load_settings,
    log_format,
    log_level,
)
from bridge.exceptions import ConfigError, IngestError
from bridge.settings import Settings

if TYPE_CHECKING:
    from bridge.pipeline import LeadResult


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # Before any config is read, from the environment alone: a config problem is logged too.
    dev = args.func is cmd_dev
    logs.setup(
        level=log_level(),
        fmt=log_format(default=defaults.DEV_LOG_FORMAT if dev else defaults.LOG_FORMAT),
    )
    try:
        return args.func(args) or 0
    except ConfigError as exc:
        print(f"oliai-bridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oliai-bridge",
        description="Webhooks from forms and CRMs in, OliAI contacts out.",
    )
    parser.add_argument("--config", help="config file (default: $BRIDGE_CONFIG or ./config.toml)")
    sub = parser.add_subparsers(metavar="command")

    p = sub.add_parser("dev", help="everything in one command: Redis, sandbox, web, worker")
    p.add_argument("--port", type=int, default=None, help="web port (default $PORT or 8000)")
    p.add_argument("--sandbox-port", type=int, default=8787)
    p.add_argument("--data-dir", default=None, help="embedded Redis data folder")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("web", help="the webhook receiver under gunicorn")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=None, help="default $PORT or 8000")
    p.add_argument("--workers", type=int, default=None, help="default $WEB_CONCURRENCY or 2")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("worker", help="deliver queued leads to OliAI")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--name", default=None)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("sandbox", help="run the OliAI API simulator")
    from sandbox.cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser("check-config", help="validate the config: OK, or every problem")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("flows", help="the voice flows of the configured API key(s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_flows)

    p = sub.add_parser("try", help="map a sample payload to a contact; sends nothing")
    p.add_argument("route")
    p.add_argument("file", help="the payload (a file; - for standard input)")
    p.add_argument("--content-type", default=None, help="default: from the file's extension")
    p.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    p.set_defaults(func=cmd_try)

    p = sub.add_parser("failed", help="failed and skipped deliveries")
    fsub = p.add_subparsers(metavar="action")
    q = fsub.add_parser("list", help="list them, newest first")
    q.add_argument("--route")
    q.add_argument("--reason", help="reason code, e.g. invalid, unmappable, retries_exhausted")
    q.add_argument("--since", help="15m, 2h, 7d or epoch seconds")
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--page", type=int, default=1)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_failed_list)
    q = fsub.add_parser("show", help="one delivery: raw payload, contact, every attempt")
    q.add_argument("delivery_id")
    q.set_defaults(func=cmd_failed_show)

    p = sub.add_parser("replay", help="deliver failed/skipped deliveries again")
    p.add_argument("ids", nargs="*")
    p.add_argument("--route")
    p.add_argument("--reason")
    p.add_argument("--since")
    p.add_argument("--all", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument(
        "--remap",
        action="store_true",
        help="map the stored raw payload again with the current config",
    )
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("import", help="backfill existing leads from a CSV or JSON Lines file")
    p.add_argument("path", help="a .csv (comma, semicolon or tab) or .jsonl / .ndjson file")
    p.add_argument("--route", required=True, help="the route whose mapping and audience to use")
    p.add_argument("--dry-run", action="store_true", help="map and count; store nothing")
    p.add_argument(
        "--rejects", metavar="FILE.csv", help="write the rows not imported, with a reason column"
    )
    p.add_argument(
        "--id-column",
        metavar="COLUMN",
        help="a column holding each row's own id (a CRM's record id): dedup keys on it instead "
        "of the row's content",
    )
    p.add_argument(
        "--encoding", help="the file's encoding when it is not UTF-8 (e.g. cp1252); default UTF-8"
    )
    p.add_argument(
        "--delimiter",
        choices=[",", ";", "tab"],
        help="the CSV delimiter (default: sniffed from the file)",
    )
    p.set_defaults(func=cmd_import)
    return parser


# --- settings and Redis for the commands --------------------------------------------------


def settings_for(args, *, demo_ok: bool = False) -> Settings:
    env = dict(os.environ)
    if args.config:
        env["BRIDGE_CONFIG"] = args.config
    if demo_ok and not config_exists(env):
        settings = build_settings(demo_settings_data(), env=env, source_path="(built-in demo)")
    else:
        settings = load_settings(args.config, env=env)
    logs.hide(settings.secrets())
    return settings


def redis_for(settings: Settings):
    from bridge.storage import connect_for

    url = settings.redis_url or dev_redis_url(settings)
    if not url:
        raise SystemExit("oliai-bridge: REDIS_URL is not set (and no oliai-bridge dev is running)")
    return connect_for(settings, url)


def warn_about(settings: Settings, redis=None) -> None:
    """Config warnings, and a Redis that may evict leads, in the log at start-up."""
    from redis.exceptions import RedisError

    from bridge.storage import redis_warnings

    log = logging.getLogger("bridge")
    for warning in settings.warnings:
        log.warning("config: %s", warning, extra={"event": "config.warning"})
    if redis is None:
        return
    try:
        found = redis_warnings(redis)
    except RedisError as exc:
        log.warning("Redis not checked: %s", exc, extra={"event": "redis.unchecked"})
        return
    problem = found.pop("redis.too_old", None)
    if problem:
        log.error(problem, extra={"event": "redis.too_old"})
        raise SystemExit(f"oliai-bridge: {problem}")
    for event, text in found.items():
        log.warning(text, extra={"event": event})


def dev_redis_url(settings: Settings) -> str | None:
    """The embedded Redis a running ``oliai-bridge dev`` wrote down, for failed/replay/try."""
    marker = Path(settings.data_dir) / "redis.url"
    return marker.read_text().strip() if marker.is_file() else None


# --- commands --------------------------------------------------------------------------------


def cmd_dev(args) -> int:
    from bridge.dev import run_dev

    return run_dev(args)


def cmd_web(args) -> int:
    from bridge.web import run_web

    settings = settings_for(args)
    warn_about(settings)
    port = args.port or settings.port
    workers = args.workers or settings.web_concurrency
    run_web(settings, host=args.host, port=port, workers=workers)
    return 0


def cmd_worker(args) -> int:
    from redis.exceptions import ConnectionError, TimeoutError

    from jobs.worker import run_worker

    settings = settings_for(args)
    log = logging.getLogger("bridge.worker")
    warn_about(settings, redis_for(settings))
    wait = 1.0
    for start in itertools.count():
        # A worker that lost Redis may still be registered under its old name: use a new one.
        name = f"{args.name}-{start}" if args.name and start else args.name
        if not args.name and start:
            name = f"bridge-{socket.gethostname()}-{os.getpid()}-{start}"
        try:
            if run_worker(settings, redis_for(settings), burst=args.burst, name=name):
                return 0
            log.warning(
                "the worker loop ended on an error; starting again in %.0f s",
                wait,
                extra={"event": "worker.restart"},
            )
            time.sleep(wait)
            wait = min(wait * 2, 30.0)
        except (ConnectionError, TimeoutError) as exc:
            # Redis restarting: start again when it is back instead of exiting (the reaper
            # hands back whatever this worker was in the middle of).
            log.warning(
                "Redis unavailable (%s); starting again in %.0f s",
                exc,
                wait,
                extra={"event": "worker.restart"},
            )
            time.sleep(wait)
            wait = min(wait * 2, 30.0)


def cmd_sandbox(args) -> int:
    from sandbox.cli import run

    return run(args)


def cmd_check_config(args) -> int:
    try:
        settings = settings_for(args)
    except ConfigError as exc:
        print("config has problems:")
        for problem in exc.problems:
            print(f"  - {problem}")
        return 1
    print(
        f"OK: {settings.source_path}: {len(settings.routes)} route(s): "
        + ", ".join(f"{r.name} ({r.source})" for r in settings.routes.values())
    )
    for warning in [*settings.warnings, *redis_warnings(settings)]:
        print(f"  warning: {warning}")
    problems = campaign_flow_problems(settings)
    for problem in problems:
        print(f"  - {problem}")
    return 1 if problems else 0


def api_clients(settings: Settings) -> dict[str, tuple[object, list]]:
    """One OliAI client per configured API key (by key id), with the routes that use it."""
    from jobs.oliai import OliAIClient
    from jobs.ratelimit import key_id

    clients: dict[str, tuple[object, list]] = {}
    for route in settings.routes.values():
        api_key = settings.api_key_for(route)
        if not api_key:
            continue
        kid = key_id(api_key)
        if kid not in clients:
            clients[kid] = (OliAIClient(settings.oliai.base_url, api_key), [])
        clients[kid][1].append(route)
    return clients


def campaign_flow_problems(settings: Settings) -> list[str]:
    """Each ``[routes.campaign]`` flow exists for its key, checked when the API answers."""
    from bridge.exceptions import ApiError, TransientApiError, Unauthorized
    from jobs.campaigns import flow_problems

    problems: list[str] = []
    for client, routes in api_clients(settings).values():
        for route in routes:
            if route.campaign is None:
                continue
            try:
                found = flow_problems(client, route.campaign)
            except (TransientApiError, Unauthorized) as exc:
                print(f"  warning: routes[{route.name}].campaign: flow not checked: {exc}")
                continue
            except ApiError as exc:
                found = [f"flows could not be listed: {exc}"]
            problems += [f"routes[{route.name}].campaign.{p}" for p in found]
    return problems


def cmd_flows(args) -> int:
    from bridge.exceptions import ApiError

    settings = settings_for(args, demo_ok=True)
    clients = api_clients(settings)
    if not clients:
        print("no API key configured (set OLIAI_API_KEY or [oliai] api_key)", file=sys.stderr)
        return 1
    status = 0
    out = []
    for kid, (client, routes) in clients.items():
        try:
            flows = list(client.iter_pages(client.list_flows))
        except ApiError as exc:
            print(f"key {kid} ({', '.join(r.name for r in routes)}): {exc}", file=sys.stderr)
            status = 1
            continue
        out.append({"key": kid, "routes": [r.name for r in routes], "flows": flows})
    if args.json:
        print(json.dumps(out, indent=2))
        return status
    for entry in out:
        print(f"key {entry['key']} (routes: {', '.join(entry['routes'])})")
        for flow in entry["flows"]:
            language = flow.get("language") or ""
            print(f"  {flow.get('id', ''):<28} {language:<6} {flow.get('name', '')}")
        if not entry["flows"]:
            print("  (no voice flows: create one in the OliAI dashboard)")
    return status


def redis_warnings(settings: Settings) -> list[str]:
    """What check-config says of the Redis in ``REDIS_URL`` (nothing when it is unset)."""
    from redis.exceptions import RedisError

    from bridge.storage import connect_for
    from bridge.storage import redis_warnings as found_in

    if not settings.redis_url:
        return []
    try:
        redis = connect_for(settings)
        redis.ping()
        found = found_in(redis)
    except RedisError as exc:
        return [f"REDIS_URL: Redis did not answer ({type(exc).__name__}: {exc})"]
    return [f"WARNING: {text}" for text in found.values()]


def named_route(settings, name: str):
    """The route called ``name``, or None after saying which routes there are."""
    route = settings.routes.get(name)
    if route is None:
        print(f"no route {name!r}; routes: {', '.join(settings.routes)}", file=sys.stderr)
    return route


def cmd_try(args) -> int:
    from bridge.event import InboundRequest, utcnow_iso
    from bridge.pipeline import map_request
    from bridge.sources import get_source

    settings = settings_for(args, demo_ok=True)
    route = named_route(settings, args.route)
    if route is None:
        return 1
    body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    headers = {}
    for item in args.header:
        name, _, value = item.partition(":")
        headers[name.strip().lower()] = value.strip()
    ctype = args.content_type or headers.get("content-type") or guess_type(args.file)
    headers["content-type"] = ctype
    req = InboundRequest(method="POST", route=route.name, body=body, headers=headers)
    source = get_source(route.source)
    out: dict = {
        "route": route.name,
        "source": source.name,
        "note": "signature not checked; nothing sent",
        "leads": [],
    }
    try:
        results = map_request(req, route, source, utcnow_iso())
    except IngestError as exc:
        print(json.dumps({**out, "error": exc.to_dict()}, indent=2))
        return 1
    out["leads"] = [try_item(result) for result in results]
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 1 if any("error" in item for item in out["leads"]) else 0


def try_item(result: LeadResult) -> dict:
    """One lead as ``try`` shows it: the event, and the contact or why there is none."""
    item: dict = {"event": result.event.to_dict()}
    if result.fetch:
        item["contact"] = None
        item["note"] = "the worker fetches this lead from the provider's API first"
    elif result.unmappable is not None:
        item["error"] = result.unmappable.to_dict()
    else:
        item["contact"] = result.contact
    return item


def guess_type(path: str) -> str:
    if path.endswith(".json") or path == "-":
        return "application/json"
    if path.endswith(".xml"):
        return "text/xml"
    guessed, _ = mimetypes.guess_type(path)
    return guessed or "application/x-www-form-urlencoded"


def cmd_failed_list(args) -> int:
    from bridge.admin import parse_since
    from bridge.deliveries import DeliveryStore

    settings = settings_for(args, demo_ok=True)
    store = DeliveryStore(redis_for(settings))
    limit = max(1, min(args.limit, 1000))
    offset = (max(1, args.page) - 1) * limit
    ids, total = store.failed_ids(
        route=args.route,
        reason=args.reason,
        since=parse_since(args.since),
        offset=offset,
        limit=limit,
    )
    items = [d.summary() for d in (store.get(i) for i in ids) if d is not None]
    store.prune_indexes([i for i in ids if i not in {x["deliveryId"] for x in items}])
    if args.json:
        print(json.dumps({"total": total, "page": args.page, "items": items}, indent=2))
        return 0
    pages = max(1, -(-total // limit))
    print(f"{total} failed/skipped deliveries (page {args.page} of {pages})")
    if items:
        print(
            f"{'id':<30} {'route':<18} {'status':<8} {'reason':<18} {'tries':>5} "
            f"{'age':>6}  last answer / reason"
        )
    now = time.time()
    for item in items:
        age = human_age(now - iso_to_epoch(item["updatedAt"]))
        last = item["lastApiAnswer"]
        said = f"{last['status']} {last['message']}" if last else (item["reason"] or "")
        print(
            f"{item['deliveryId']:<30} {item['route'][:18]:<18} {item['status']:<8} "
            f"{(item['reasonCode'] or '')[:18]:<18} {item['attempts']:>5} {age:>6}  "
            f"{said[:80]}"
        )
    return 0


def cmd_failed_show(args) -> int:
    from bridge.admin import delivery_detail
    from bridge.deliveries import DeliveryStore

    settings = settings_for(args, demo_ok=True)
    store = DeliveryStore(redis_for(settings))
    d = store.get(args.delivery_id)
    if d is None:
        print(f"no delivery {args.delivery_id!r}", file=sys.stderr)
        return 1
    print(json.dumps(delivery_detail(store, d), indent=2, ensure_ascii=False))
    return 0


def cmd_replay(args) -> int:
    from bridge.admin import parse_since
    from jobs.replay import Replayer

    settings = settings_for(args, demo_ok=True)
    replayer = Replayer(settings, redis_for(settings))
    since = parse_since(args.since)
    if args.ids:
        ids = list(args.ids)
        total = len(ids)
    elif args.all or args.route or args.reason or since is not None:
        _, total = replayer.store.failed_ids(
            route=args.route, reason=args.reason, since=since, limit=1
        )
        ids = replayer.select(route=args.route, reason=args.reason, since=since)
    else:
        print("name delivery ids, or --route / --reason / --since, or --all", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    done = 0

    def progress(result) -> None:
        nonlocal done
        done += 1
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
        width = 30
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(
            f"\r[{bar}] {done}/{total} " + " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        )
        sys.stderr.flush()
        if result.outcome in ("unmappable", "missing"):
            sys.stderr.write(f"\n  {result.delivery_id}: {result.outcome}: {result.detail}\n")

    replayer.replay_many(ids, remap=args.remap, dry_run=args.dry_run, progress=progress)
    if done:
        sys.stderr.write("\n")
    verb = "would requeue" if args.dry_run else "requeued"
    print(
        f"{verb} {counts.get('would_requeue', counts.get('requeued', 0))} of {done}; "
        + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    )
    return 0


#: Rejected rows listed after the summary when no --rejects file takes them all.
SHOWN_REJECTS = 10


def cmd_import(args) -> int:
    from redis.exceptions import RedisError

    from bridge.backfill import Backfill, RejectsFile
    from bridge.progress import Progress
    from bridge.rows import RowFile, UnreadableFile

    settings = settings_for(args, demo_ok=True)
    route = named_route(settings, args.route)
    if route is None:
        return 1
    try:
        delimiter = "\t" if args.delimiter == "tab" else args.delimiter
        rows = RowFile.open(args.path, encoding=args.encoding, delimiter=delimiter)
        if args.id_column and rows.kind == "csv" and args.id_column not in rows.columns:
            raise UnreadableFile(
                f"{rows.path}: no column {args.id_column!r} (columns: {', '.join(rows.columns)})"
            )
        total = rows.count()
    except UnreadableFile as exc:
        print(f"oliai-bridge import: {exc}", file=sys.stderr)
        return 1
    backfill = Backfill(
        settings, redis_for(settings), route, id_column=args.id_column, dry_run=args.dry_run
    )
    try:
        rejects = RejectsFile(args.rejects, rows) if args.rejects else None
    except OSError as exc:
        print(f"oliai-bridge import: cannot write {args.rejects}: {exc.strerror}", file=sys.stderr)
        return 1
    shown = []

    def rejected(item) -> None:
        if rejects:
            rejects.write(item)
        elif len(shown) < SHOWN_REJECTS:
            shown.append(item)

    progress = Progress(total)
    try:
        backfill.run(rows, on_chunk=lambda tally: progress.update(tally.rows), on_reject=rejected)
    except (RedisError, UnreadableFile) as exc:
        progress.finish()
        problem = f"Redis unavailable ({exc})" if isinstance(exc, RedisError) else str(exc)
        print(
            f"oliai-bridge import: stopped after {backfill.tally.rows} rows: {problem}; "
            "rows stored so far are not imported twice when the command runs again",
            file=sys.stderr,
        )
        return 1
    finally:
        if rejects:
            rejects.close()
    progress.finish()
    print("\n".join(import_summary(args, rows, backfill.tally, shown)))
    return 1 if backfill.tally.unreadable else 0


def import_summary(args, rows, tally, shown) -> list[str]:
    """What ``import`` says when done: the counts, then where to look next."""
    where = "line" if rows.kind == "jsonl" else "row"
    lines = [
        f"{'dry run, nothing stored: ' if args.dry_run else ''}{args.path} into route "
        f"{args.route} (backfill lane): {tally.rows} rows",
        f"{'would import' if args.dry_run else 'accepted'}: {tally.accepted}",
        f"duplicates: {tally.duplicates}",
        f"skipped: {sum(tally.skipped.values())}",
    ]
    lines += [f"  {label}: {n}" for label, n in tally.skipped.most_common()]
    if tally.blank:
        lines.append(f"blank {where}s ignored: {tally.blank}")
    if args.rejects:
        skipped = sum(tally.skipped.values())
        lines.append(f"rows not imported ({skipped}), each with its reason: {args.rejects}")
    elif shown:
        lines.append("not imported:")
        lines += [f"  {where} {r.row.number}: {r.label}: {r.reason}" for r in shown]
        if sum(tally.skipped.values()) > len(shown):
            lines.append("  ... every one with its reason: --rejects FILE.csv")
    if tally.accepted and not args.dry_run:
        lines.append(f"deliveries that fail later: oliai-bridge failed list --route {args.route}")
    return lines


def human_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(0, seconds))}s"


def iso_to_epoch(value: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


if __name__ == "__main__":
    sys.exit(main())
