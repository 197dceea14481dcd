"""Whole-or-nothing result files, and exclusive locks that die with their process.

Every result file (checkpoints, configs, submissions, JSON / CSV / markdown summaries, figures) is written
through :func:`atomic_write`: into a temporary file in the target's own folder (so the final rename never
crosses file systems), flushed and fsynced, then renamed over the target with ``os.replace``. A reader
sees the old file or the new one, never a part of one. A failure mid-write (a full disk, a quota, an I/O
error, an exception in the writing code) removes the temporary file and leaves the old file as it was;
only a process killed mid-write leaves a hidden ``.NAME.<hex>.tmp`` behind, which no reader opens.

:func:`exclusive_lock` keeps two processes from writing one folder at once (two searches in one run folder,
two retrains into one output folder, two builders of one cache entry).

    >>> with atomic_write(Path("out/scores.csv"), newline="") as f:  # doctest: +SKIP
    ...     csv.writer(f).writerows(rows)
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from sensorium.errors import UserError


class WriteError(UserError, OSError):
    """A file or folder that could not be written; the message names it and the cause, on one line.

    A UserError, so the CLI exits 2 with that line; also an OSError carrying the cause's ``errno`` and
    ``strerror`` (e.g. ENOSPC), so code that tells infrastructure faults by errno still can.
    """

    def __str__(self) -> str:
        # OSError would print "[Errno N] ..." once errno and strerror are set; keep the one-line message
        return str(self.args[0])


class FolderInUse(UserError):
    """Another live process holds the lock of a folder this process wants to write."""


def write_error(target: str | Path, err: OSError) -> WriteError:
    """The error for ``target`` that could not be written because of ``err`` (keeps its errno)."""
    cause = err.strerror or (str(err).splitlines() or [""])[0] or type(err).__name__
    error = WriteError(f"cannot write {target}: {cause}; the previous version, if any, is unchanged")
    error.errno, error.strerror = err.errno, cause
    return error


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, newline: str | None = None) -> Iterator[IO[Any]]:
    """A new file open for writing (``mode`` "w": UTF-8 text, or "wb"); ``path`` gets its content only when
    the block ends without an exception. Missing parent folders are created.

    An OSError inside the block or while finishing the file becomes a :class:`WriteError` naming ``path``;
    any other exception passes through unchanged. Either way the temporary file is removed and ``path``
    is left exactly as it was (absent, or the previous complete file).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")  # unique: concurrent writers never share one
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open, not tempfile.mkstemp: mkstemp's mode 0600 would survive the rename and hide results
        # from the rest of a group sharing the run folder; 0666 lets the umask decide, as open() does.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.replace(tmp, path)
    except OSError as err:
        _discard(tmp)
        raise write_error(path, err) from err
    except BaseException:
        _discard(tmp)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all (:func:`atomic_write`); returns the path."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure to ``path`` (format from its suffix) whole or not at all."""
    path = Path(path)
    with atomic_write(path, "wb") as f:  # a file object: matplotlib cannot see the suffix, so say it
        fig.savefig(f, format=path.suffix.lstrip("."), dpi=dpi)
    return path


def _discard(tmp: Path) -> None:
    # a failed clean-up (read-only file system by now) must not hide the error that caused it
    with suppress(OSError):
        tmp.unlink(missing_ok=True)


@contextmanager
def exclusive_lock(lock_file: str | Path, what: str, *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``lock_file`` for the block; ``what`` names the holder's kind
    ("search", "retrain", ...) in the refusal.

    ``wait=False``: when another process holds it, raise :class:`FolderInUse` naming the folder and the
    holder (pid, host, since when: the holder writes them into the file). ``wait=True``: block until free.
    The lock belongs to this process's open file, so the kernel drops it when the process ends, however
    it ends: a killed holder never blocks the next one (on NFS, Linux maps flock to NFS locks, which the
    server also frees when the client dies). The file is never removed or replaced: a second file under
    the same name would be a second, independent lock.
    """
    lock_file = Path(lock_file)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)  # no O_TRUNC: it would wipe the holder's note
    except OSError as err:
        raise write_error(lock_file, err) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "holder not recorded yet"
            raise FolderInUse(
                f"{lock_file.parent} is in use by another {what} ({holder}); wait for it to end or use another folder"
            ) from None
        note = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
