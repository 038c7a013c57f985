"""Atomic file output: a reader (or a crash) never sees a half-written file.

A write goes to a temp file beside the target and is renamed over it, so it may only replace a
regular file (or create one). Renaming over anything else would destroy it: as root,
``gen-data --out /dev/full`` once replaced the device node with a regular file. So a target that
exists and is not a regular file (a directory, device, pipe or socket) is refused before any byte
is written; a symbolic link to a regular file is followed, so the link itself stays in place.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import IO

from dmt.errors import DmtError


def replaceable_target(path: str | os.PathLike[str]) -> str:
    """The file an atomic write of ``path`` would replace: ``path`` itself, or a link's target.

    Raises:
        DmtError: ``path`` exists and is not a regular file (or a link to one).
    """
    path = os.fspath(path)
    if not path:
        raise DmtError("an empty output path was given; name a file")
    try:
        mode = os.stat(path).st_mode  # follows links: a link to a regular file is fine
    except (FileNotFoundError, NotADirectoryError):
        return path  # absent, a dangling link (the write replaces it), or under a file (the write fails)
    if stat.S_ISDIR(mode):
        raise DmtError(f"{path} is a directory; give a file path")
    if not stat.S_ISREG(mode):
        raise DmtError(
            f"{path} is not a regular file (a device, pipe or socket); refusing to replace it: give a file path"
        )
    return os.path.realpath(path) if os.path.islink(path) else path


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temp file next to ``path``; rename it over ``path`` only if the block succeeds.

    Raises:
        DmtError: ``path`` exists and is not a regular file (see :func:`replaceable_target`).
    """
    path = replaceable_target(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        replaceable_target(path)  # again: something may have appeared there while we wrote
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
