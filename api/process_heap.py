"""The garbage collector of a long-running process (a server worker, a file
import, the demo generator): what the process built to start lives as long as
it does, so it is moved out of the collector's generations once, and a full
collection walks only what was made since.

A full collection walks every tracked object: about 120,000 after a worker's
start (modules, the app, its routes and schemas, SQLAlchemy's and msgspec's
structures), which took 115-190 ms on a busy 2-core machine, stopping every
request in flight; a file import's full collections took a sixth of its time.
Frozen, the startup heap costs nothing to a collection. A server worker
freezes it for good (`freeze_startup_heap`); a batch command does for its run
(`batch_collector`), since the tests run commands inside their own process."""

import contextlib
import gc
from collections.abc import Iterator


def freeze_startup_heap() -> None:
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def batch_collector() -> Iterator[None]:
    """For a batch command's run, where no one waits on a pause: the heap
    built before it frozen, and young collections every 50,000 allocations
    instead of 700 (each walks more, about 20 ms here, which a server's
    requests would feel), so the rows in flight are rarely walked again and
    again. A 200,000-row import spent 3.8 s of 34 collecting, 0.8 s so.
    Both are undone afterwards (the frozen heap is collectable again)."""
    thresholds = gc.get_threshold()
    freeze_startup_heap()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
