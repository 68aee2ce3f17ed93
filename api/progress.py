"""How far a long command has got, on standard error: a progress bar (rich) on
a terminal; otherwise (cron, a log file, CI) a plain line when it starts and
then at most every `LineProgress.every` seconds, so a long run is seen to move
without flooding a log. Used by `loyalty jobs run` and `loyalty finance
export-journal`; their summaries go to standard output at the end."""

import time
from typing import TextIO


class BarProgress:
    """A rich progress bar: items done of the total, points (when there are
    any), time elapsed and left."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bar = None
        self.task = None
        self.points = 0

    def start(self, label: str, unit: str, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TextColumn("{task.fields[points]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
        )
        self.bar.start()
        self.task = self.bar.add_task(label, total=total, points="")

    def advance(self, items: int, points: int = 0) -> None:
        if self.bar is None:
            return
        self.points += points
        shown = f"{self.points:,} points" if self.points else ""
        self.bar.update(self.task, advance=items, points=shown)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class LineProgress:
    """Plain lines: `expire-holds: 2000/5005 holds (40,000 points), 950/s`."""

    every = 10.0  # seconds between lines

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.label = self.unit = ""
        self.total = self.done = self.points = 0
        self.started = self.last = 0.0

    def start(self, label: str, unit: str, total: int) -> None:
        self.label, self.unit, self.total = label, unit, total
        self.started = self.last = time.monotonic()
        self._line(f"{total:,} {unit} to do")

    def advance(self, items: int, points: int = 0) -> None:
        self.done += items
        self.points += points
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            shown = f" ({self.points:,} points)" if self.points else ""
            self._line(f"{self.done:,}/{self.total:,} {self.unit}{shown}, {rate:,.0f}/s")

    def finish(self) -> None:
        pass

    def _line(self, text: str) -> None:
        print(f"{self.label}: {text}", file=self.stream, flush=True)


def progress_for(stream: TextIO) -> BarProgress | LineProgress:
    """A bar on a terminal, plain lines anywhere else."""
    isatty = getattr(stream, "isatty", None)
    return BarProgress(stream) if isatty is not None and isatty() else LineProgress(stream)
