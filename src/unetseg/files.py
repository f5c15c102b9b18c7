"""Atomic file output: a file either appears whole under its final name or not at all.

A writer fills a temporary file beside the target (``.<stem>.<random>.tmp<suffix>``), which is
fsynced and renamed over the target; the folder is fsynced too, so the rename survives a power
loss. A process killed mid-write (SIGKILL, power cut) leaves at most such a temporary file and the
previous version of the target; :func:`remove_stale_temps` clears those leftovers.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from unetseg.errors import UserError

# errors while writing that mean "this place cannot take the file": a UserError naming it
_PLACE_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                 errno.EISDIR)
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]*)?$")


def _cannot_write(final: Path, exc: OSError) -> UserError:
    fix = {errno.ENOSPC: "free disk space or choose another output folder",
           errno.EDQUOT: "free disk space or choose another output folder",
           errno.EISDIR: "a folder has this name; move it or choose another output folder"}
    return UserError(f"{final}: cannot write the file ({exc.strerror or exc});"
                     f" {fix.get(exc.errno or 0, 'choose a writable output folder')}")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    The temporary name keeps the suffix so writers that pick a format by suffix still work.

    Raises:
        UserError: the folder cannot take the file (missing, not a folder, read-only, full).
    """
    final = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent
        )
    except OSError as exc:
        raise _cannot_write(final, exc) from None
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would make outputs private to their writer
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in _PLACE_ERRORS:
            raise _cannot_write(final, exc) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(final.parent)


def is_temp_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named like a temporary file of :func:`atomic_path`."""
    return bool(_TEMP_NAME.match(Path(path).name))


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in ``folder``.

    Only call it while no other process writes into ``folder``. Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if p.is_file() and is_temp_file(p):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_csv_atomic(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` as a CSV table atomically: one column per key, in the order the keys first
    appear (a row without a key leaves its cell empty)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or ["image"])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def output_folder(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Create the folder a command writes into (with its parents) and return it.

    Raises:
        UserError: ``path`` is a file or cannot be created; the message names ``flag``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder; choose another {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create the folder ({exc.strerror}); choose a writable"
                        f" {flag}") from None
    return path
