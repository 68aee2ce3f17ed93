"""Work in lanes: coroutines run at once, each in transactions of its own on
rows the others do not hold (a job's batches, a file import's cards), so
PostgreSQL's share of one lane and Python's of another overlap.

The first failure is the whole run's: the other lanes are cancelled (their
open transactions roll back) and that error is raised as it was, as one lane
alone would have raised it."""

import asyncio
from collections.abc import Awaitable


async def in_lanes(*lanes: Awaitable[object]) -> None:
    """Run `lanes` to completion, or none past the first failure."""
    running = [asyncio.ensure_future(lane) for lane in lanes]
    try:
        await asyncio.gather(*running)
    except BaseException:
        for lane in running:
            lane.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise
