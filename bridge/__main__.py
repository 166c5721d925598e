"""``python -m bridge`` is ``oliai-bridge``; the console script starts here too.

``web`` serves with gunicorn's gevent worker, which patches the standard library when a worker
starts. By then the master has imported ``ssl`` (gunicorn's config, werkzeug through
``http.client``, urllib3, redis), and the worker, a fork of it, keeps modules holding the
unpatched ``ssl`` classes: gevent warns, and a TLS connection made through them (``rediss://``)
would block the whole worker instead of yielding. So ``web`` patches here, before anything else
is imported; the worker's own patching then finds everything done. No other command runs under
gevent (``dev`` starts ``web`` as a process of its own).
"""

from __future__ import annotations

import sys

#: The commands that serve under gevent.
GEVENT_COMMANDS = frozenset({"web"})


def command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the arguments after the program), read the way
    ``bridge.cli``'s parser reads it: ``--config`` is the one option before it with a value."""
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def main() -> int:
    if command_of(sys.argv[1:]) in GEVENT_COMMANDS:
        from gevent import monkey

        monkey.patch_all()
    from bridge.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
