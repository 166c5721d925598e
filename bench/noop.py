"""A job that does nothing: what the worker-model comparison runs (``bench.noop.noop``)."""


def noop() -> None:
    return None
