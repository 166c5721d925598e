"""Command-line front of the sandbox: ``oliai-bridge sandbox`` and ``python -m sandbox``."""

from __future__ import annotations

import argparse
import sys

from sandbox import DEMO_KEY
from sandbox.options import FAIL_AFTER_COMMIT_MODES, Options


def _key_list(value: str) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox's flags to ``parser`` (used by both entry points)."""
    d = Options()
    a = parser.add_argument
    a("--host", default=d.host, help="interface to listen on (default %(default)s)")
    a("--port", type=int, default=d.port, help="port; 0 picks a free one (default %(default)s)")
    a(
        "--keys",
        type=_key_list,
        default=[DEMO_KEY],
        help="comma-separated API keys, each its own organization (default: the demo key)",
    )
    a("--revoked-keys", type=_key_list, default=[], help="keys answered 'has been revoked'")
    a("--expired-keys", type=_key_list, default=[], help="keys answered 'has expired'")
    a("--rate-window", type=float, default=d.rate_window, help="seconds (default %(default)s)")
    a("--general-limit", type=int, default=d.general_limit, help="requests per window per key")
    a("--bulk-limit", type=int, default=d.bulk_limit, help="bulk requests per window per key")
    a("--latency-ms", type=float, default=d.latency_ms, help="added to every /v1 request")
    a("--fail-rate", type=float, default=d.fail_rate, help="share of /v1 requests answered 500")
    a(
        "--fail-after-commit-rate",
        type=float,
        default=d.fail_after_commit_rate,
        help="share of successful /v1 writes that are kept but answered 500 or dropped",
    )
    a(
        "--fail-after-commit-mode",
        choices=FAIL_AFTER_COMMIT_MODES,
        default=d.fail_after_commit_mode,
        help="500, drop (close the connection) or mixed (default %(default)s)",
    )
    a("--bulk-max-items", type=int, default=d.bulk_max_items, help="cap of POST /contacts/bulk")
    a("--max-body-bytes", type=int, default=d.max_body_bytes, help="larger bodies get 413")
    a("--quota-exhausted", action="store_true", help="campaign start answers 403")
    a("--seed", type=int, default=None, help="seed of the fault-injection RNG")
    a(
        "--campaign-seconds-per-contact",
        type=float,
        default=d.campaign_seconds_per_contact,
        help="simulated dialing time per audience member (default %(default)s)",
    )
    a(
        "--campaign-max-seconds",
        type=float,
        default=d.campaign_max_seconds,
        help="cap of a campaign's simulated duration (default %(default)s)",
    )
    a(
        "--import-delay-ms",
        type=float,
        default=d.import_delay_ms,
        help="delay before an accepted import is processed (default %(default)s)",
    )
    a("--quiet", action="store_true", help="do not log each request to stderr")


def options_from_args(args: argparse.Namespace) -> Options:
    return Options(
        host=args.host,
        port=args.port,
        keys=args.keys,
        revoked_keys=args.revoked_keys,
        expired_keys=args.expired_keys,
        rate_window=args.rate_window,
        general_limit=args.general_limit,
        bulk_limit=args.bulk_limit,
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        fail_after_commit_rate=args.fail_after_commit_rate,
        fail_after_commit_mode=args.fail_after_commit_mode,
        bulk_max_items=args.bulk_max_items,
        max_body_bytes=args.max_body_bytes,
        quota_exhausted=args.quota_exhausted,
        seed=args.seed,
        campaign_seconds_per_contact=args.campaign_seconds_per_contact,
        campaign_max_seconds=args.campaign_max_seconds,
        import_delay_ms=args.import_delay_ms,
        quiet=args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    """Start the sandbox from parsed arguments; returns the process exit code."""
    # Imported here so that building the parser (e.g. for --help) does not load Flask.
    from sandbox.server import serve

    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    return serve(options)
