"""Check every output path a command will write before it starts any work.

A command that trains for an hour and then finds that ``--out`` names a file, or that ``--plot``
is a directory, wastes the hour and leaves half its outputs behind. Each subcommand calls these
helpers on all of its output flags first; they raise :class:`~dmt.errors.DmtError` (one line,
exit 2) naming the flag, the path and the fix.

    check_output_file(args.plot, "--plot")      # a file the command will (atomically) write
    check_output_dir(args.out, "--out")         # a directory it will create or write into
"""

from __future__ import annotations

import os

from dmt.atomic import replaceable_target
from dmt.errors import DmtError


def check_output_file(path: str | os.PathLike[str] | None, flag: str) -> None:
    """Fail unless ``path`` can be written as a file: absent or a regular file, in a writable directory.

    ``None`` (the flag was not given) passes. Missing parent directories are fine as long as the
    nearest existing one is a writable directory (the atomic writer creates the rest).

    Raises:
        DmtError: empty path, a directory, a special file (device, pipe, socket), or a parent that
            is a file or not writable.
    """
    if path is None:
        return
    path = os.fspath(path)
    if not path:
        raise DmtError(f"{flag} is empty; give a file path")
    try:
        replaceable_target(path)
    except DmtError as e:
        raise DmtError(f"{flag} {e}") from None
    _check_creatable_in(os.path.dirname(os.path.abspath(path)), path, flag)


def check_output_dir(path: str | os.PathLike[str] | None, flag: str) -> None:
    """Fail unless ``path`` is a writable directory or can be created as one.

    Raises:
        DmtError: empty path, an existing file (not a directory), or a parent that cannot hold it.
    """
    if path is None:
        return
    path = os.fspath(path)
    if not path:
        raise DmtError(f"{flag} is empty; give a directory")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise DmtError(f"{flag} {path} exists and is not a directory; give a directory path")
        if not os.access(path, os.W_OK | os.X_OK):
            raise DmtError(f"{flag} {path}: the directory is not writable; give another directory")
        return
    _check_creatable_in(os.path.dirname(os.path.abspath(path)), path, flag)


def _check_creatable_in(parent: str, path: str, flag: str) -> None:
    """The nearest existing ancestor of ``path`` must be a directory we may create entries in."""
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise DmtError(f"{flag} {path}: {parent} is a file, not a directory; give a path under a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DmtError(f"{flag} {path}: cannot create files in {parent} (not writable); give another path")
