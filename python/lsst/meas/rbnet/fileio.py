# This file is part of meas_rbnet.
"""Atomic file output: every file the package writes goes through `atomic_path`.

A file is written to a temporary file in the destination's folder and renamed
over the destination only when the writer finished, so an interrupted run (Ctrl-C,
a full disk, a crash) leaves the old file as it was and never a truncated one.
The temporary file is created with mode ``0o666`` less the process umask, as
``open(path, "w")`` would (not ``0o600`` as `tempfile.mkstemp` makes it).
"""

from __future__ import annotations

__all__ = ["atomic_path", "write_atomic", "check_output_path"]

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write ``path`` through; renamed over ``path`` on success.

    Parameters
    ----------
    path : path-like
        The destination. Its folder must exist.

    Yields
    ------
    tmp : `pathlib.Path`
        A new empty file in the same folder, named ``.<stem>.<random>.tmp<suffix>``
        so that writers which choose a format by the suffix (numpy's ``.npz``,
        matplotlib, astropy) see the destination's suffix. On an exception in the
        block it is removed and the destination is left untouched.

    Raises
    ------
    FileNotFoundError
        If the destination's folder does not exist (before anything is written).
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: the folder {str(folder)!r} does not exist.")
    # The random part is long enough that O_EXCL only fails on a real collision.
    for _ in range(10):
        tmp = folder / f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}"
        try:
            # 0o666 here lets the kernel apply the umask, as a plain open() does.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        break
    else:  # pragma: no cover - ten collisions of 48 random bits
        raise FileExistsError(f"cannot create a temporary file next to {str(path)!r}.")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` through `atomic_path`."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """Check before any work that ``path`` can be written: its folder exists and is writable.

    Returns
    -------
    path : `pathlib.Path`

    Raises
    ------
    ValueError
        Naming the option (``what``) and the problem.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder; give a file name.")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"{what} {str(path)!r}: the folder {str(folder)!r} does not exist.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r}: the folder {str(folder)!r} is not writable.")
    return path
