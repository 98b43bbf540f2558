"""Logging set-up: one line per event, to stderr and optionally to a file.

The file handler is a ``WatchedFileHandler``: when logrotate moves the file
away, the next line goes to a new file at the configured path, with or
without the ``postrotate`` signal the operations guide sends (SIGUSR1 also
reopens it explicitly).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_ROOT = "aiosrv"


def setup_logging(level: str, file: str | None = None) -> None:
    logger = logging.getLogger(_ROOT)
    aio = logging.getLogger("aiohttp")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        aio.removeHandler(h)  # it was shared with aiohttp's logger below
        h.close()
    fmt = logging.Formatter(FORMAT)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    logger.addHandler(stderr)
    if file:
        directory = os.path.dirname(file)
        if directory:
            os.makedirs(directory, exist_ok=True)
        fh = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    logger.setLevel(level.upper())
    logger.propagate = False
    # aiohttp's access log is noisy at INFO under load; keep its errors
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    for h in logger.handlers:
        if h not in aio.handlers:
            aio.addHandler(h)
    aio.setLevel(logging.WARNING)


def set_level(level: str) -> None:
    logging.getLogger(_ROOT).setLevel(level.upper())


def reopen_files() -> None:
    """Reopen file handlers (after a log rotation)."""
    for h in logging.getLogger(_ROOT).handlers:
        if isinstance(h, logging.handlers.WatchedFileHandler):
            h.acquire()
            try:
                if h.stream:
                    h.stream.close()
                h.stream = h._open()
                # remember the new file, or the next line reopens it once more
                h._statstream()
            finally:
                h.release()
