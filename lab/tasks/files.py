"""Opening corpus files: regular files only, without ever blocking."""

from __future__ import annotations

import os
import stat


def open_regular(path: str):
    """`path` opened for binary reading, or None when it is not a regular file.

    A FIFO, socket or device (also behind a symlink) can block an open or a read forever, or
    never end. The file is opened without blocking (a regular file reads as usual) and checked
    again on the open descriptor, so a path swapped for a FIFO after the first check cannot
    block either. Raises OSError as `open` does.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        return None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")
