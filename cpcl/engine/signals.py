"""Stop requests: SIGINT/SIGTERM set a `StopFlag`; the loop ends at an iteration boundary."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from ..dist import StopFlag


@contextlib.contextmanager
def stop_on_signals(stop: StopFlag) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` (the loop then ends at an iteration boundary)."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        for sig in previous:
            signal.signal(sig, stop.set)
    try:
        yield
    finally:
        if in_main_thread:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def next_batch(batches: Any, stop: StopFlag | None) -> Any:
    """The next batch, or None at the end of the epoch or when a stop request killed a worker.

    Workers ignore SIGINT/SIGTERM (`cpcl.data.loaders.ignore_stop_signals`), but one killed
    anyway (e.g. by a signal sent before it could ignore it on another platform) makes the
    loader raise RuntimeError; after a stop request that simply ends the epoch early.
    """
    try:
        return next(batches)
    except StopIteration:
        return None
    except RuntimeError:
        if stop is not None and stop.local:
            return None
        raise
