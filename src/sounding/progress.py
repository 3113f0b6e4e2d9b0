"""Progress of long work, on a terminal and off one.

On a terminal: tqdm's bars (over seeds, trials, configurations, fits) and Lightning's bar over a fit's
batches. Off one (a log file, cron, CI, ``| tee``, a Prefect flow run's log, where a stage's stderr lands
line by line) a bar redrawn with ``\\r`` is a wall of noise, so tqdm and Lightning's bars are off there,
and the same work prints a whole line every ``SOUNDING_PROGRESS_S`` seconds (30 by default) and when it
ends: what is done of how much, the elapsed and remaining time, e.g.
``tune cnn: 4/10 trials [01:00<01:30, best val/acc 0.955]``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, TextIO

from lightning.pytorch.callbacks import ProgressBar
from tqdm.auto import tqdm

INTERVAL_ENV = "SOUNDING_PROGRESS_S"
DEFAULT_INTERVAL_S = 30.0
FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit}s [{elapsed}<{remaining}{postfix}]"
"""tqdm's ``bar_format``; tqdm puts ", " before a postfix that is not empty."""


def interval_s() -> float:
    """Seconds between two progress lines off a terminal (``SOUNDING_PROGRESS_S``; 30 when unset)."""
    try:
        return max(float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)), 0.01)
    except ValueError:
        return DEFAULT_INTERVAL_S


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether progress goes to a terminal (stderr by default)."""
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


def bar(total: int, desc: str, unit: str, enabled: bool = True, leave: bool = True) -> Any:
    """A progress bar over ``total`` units of work: tqdm's on a terminal, ``Lines`` off one, a bar that
    shows nothing when not ``enabled`` (``--quiet``). Every kind takes ``update(n)``, ``n``,
    ``set_postfix(dict)`` and ``close()``, and closes at the end of a ``with`` block."""
    if enabled and not on_terminal():
        return Lines(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=None if enabled else True)


class Lines:
    """Progress as whole lines on stderr: one every ``interval_s()`` seconds while the work goes on (from a
    timer thread, so a slow unit of work still shows the time elapsed) and one when it ends."""

    def __init__(self, total: int, desc: str, unit: str, stream: TextIO | None = None) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.postfix = ""
        self._stream = stream or sys.stderr
        self._start = time.monotonic()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._ticker = threading.Thread(target=self._tick, name=f"progress {desc}", daemon=True)
        self._ticker.start()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n

    def set_postfix(self, values: dict[str, Any]) -> None:
        with self._lock:
            self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def line(self) -> str:
        """The current state as one line."""
        with self._lock:
            n, postfix = self.n, self.postfix
        return tqdm.format_meter(
            n,
            self.total,
            time.monotonic() - self._start,
            prefix=self.desc,
            unit=self.unit,
            bar_format=FORMAT,
            postfix=postfix,
        )

    def _tick(self) -> None:
        while not self._closed.wait(interval_s()):
            self._write()

    def _write(self) -> None:
        print(self.line(), file=self._stream, flush=True)

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._write()

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EpochLines(ProgressBar):
    """Lightning's progress bar off a terminal: a line of epochs done (with the latest logged figures)
    every ``interval_s()`` seconds and when the fit ends. Passed to the Trainer as any custom progress bar
    is, in place of the ``TQDMProgressBar`` it would draw."""

    def __init__(self, desc: str) -> None:
        super().__init__()
        self.desc = desc
        self._enabled = True
        self._start = self._last = 0.0
        self._shown = -1  # the epoch count of the last line

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = self._last = time.monotonic()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if time.monotonic() - self._last >= interval_s():
            self._write(trainer, trainer.current_epoch + 1)  # the counter moves on after this hook

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch != self._shown:
            self._write(trainer, trainer.current_epoch)

    def _write(self, trainer: Any, epochs: int) -> None:
        self._last, self._shown = time.monotonic(), epochs
        if not self._enabled or not trainer.is_global_zero:
            return
        figures = {
            k: f"{float(v):.4g}"
            for k, v in trainer.callback_metrics.items()
            if k in ("train/loss", "val/loss", "val/acc") and v.numel() == 1
        }
        self.print(
            tqdm.format_meter(
                epochs,
                trainer.max_epochs,
                self._last - self._start,
                prefix=self.desc,
                unit="epoch",
                bar_format=FORMAT,
                postfix=", ".join(f"{k} {v}" for k, v in figures.items()),
            )
        )

    def print(self, *args: Any, **kwargs: Any) -> None:
        print(*args, file=sys.stderr, flush=True, **kwargs)
