"""What a server worker process does once its app is built (`loyalty serve
--workers N`: uvicorn's supervisor spawns the workers): its startup heap is
frozen (api/process_heap.py), and it dies with its supervisor.

A supervisor killed outright (`kill -9`) cannot stop its workers: they would
go on serving the port, holding their connections and the embedded servers,
and a new `loyalty serve` could not listen there. Each worker asks the kernel
(Linux `PR_SET_PDEATHSIG`) for SIGTERM when its parent dies, and shuts down
as on any SIGTERM; one whose supervisor died before it asked goes at once."""

import ctypes
import multiprocessing
import os
import signal
import sys

from api.process_heap import freeze_startup_heap

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def ready_worker() -> None:
    freeze_startup_heap()
    die_with_supervisor()


def die_with_supervisor() -> None:
    """In a process spawned by a supervisor: SIGTERM when it dies. Nothing in
    a process of its own (one worker: `loyalty serve` itself serves)."""
    supervisor = multiprocessing.parent_process()
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor.pid:  # gone before the request: not told again
        os.kill(os.getpid(), signal.SIGTERM)
