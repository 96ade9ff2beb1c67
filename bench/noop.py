"""A job that does nothing: the baseline of bench_workers.py."""


def noop() -> None:
    return None
