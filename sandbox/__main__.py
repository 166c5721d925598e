"""``python -m sandbox``: run the OliAI sandbox from the command line."""

import argparse
import sys

from sandbox.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox", description="Run the OliAI API sandbox (in-memory simulator)."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
