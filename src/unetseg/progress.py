"""Progress bars on terminals, plain lines in logs.

tqdm redraws its bar with carriage returns. Written to a file or a pipe (a log file, a batch
job's output, ``2>&1 | tee``) every redraw stays, and the log fills with frames. :func:`progress`
returns a tqdm bar when its stream is a terminal (or in a notebook) and otherwise a
:class:`LineProgress`, which prints one plain line each time another ``every`` percent is done.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")


def is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _in_notebook() -> bool:
    """Jupyter's stderr is no terminal, but its widgets draw bars without frames."""
    return "ipykernel" in sys.modules


class LineProgress:
    """A tqdm stand-in for streams that are no terminal: a line per ``every`` percent.

    Supports what unetseg's call sites use: iteration, :meth:`update`, :meth:`set_postfix`,
    :meth:`close` and ``with``. Without a known total it prints one line, when closed.
    """

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "it", disable: bool = False,
                 stream: IO[str] | None = None, every: float = 10.0):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.disable, self.stream, self.every = disable, stream, every
        self.n = 0
        self.postfix = ""
        self._printed_step = 0
        self._printed_n = -1
        self._start = time.perf_counter()
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "LineProgress(iterable) to iterate"
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable or not self.total:
            return
        step = int(100.0 * self.n / self.total // self.every)
        if step > self._printed_step:
            self._printed_step = step
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable and self._printed_n != self.n:
            self._line()

    def _line(self) -> None:
        self._printed_n = self.n
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        seconds = time.perf_counter() - self._start
        parts = [f"{self.desc}: {done} {self.unit}{share}", f"{seconds:.1f} s", self.postfix]
        stream = self.stream or sys.stderr
        print("  ".join(p for p in parts if p), file=stream, flush=True)


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool = False, leave: bool = True,
             stream: IO[str] | None = None, every: float = 10.0, **tqdm_options: Any) -> Any:
    """A progress bar over ``iterable`` (or one to :meth:`update` by hand up to ``total``):
    tqdm on a terminal, else a :class:`LineProgress` printing a line per ``every`` percent
    (``every=100``: one line when done, e.g. one per training epoch).

    ``stream`` defaults to stderr at the time of the call; ``tqdm_options`` go to tqdm only.
    """
    out = stream or sys.stderr
    if not disable and (is_terminal(out) or _in_notebook()):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=out,
                    **tqdm_options)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, disable=disable,
                        stream=stream, every=every)
