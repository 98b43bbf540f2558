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
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_ROOT = "aiosrv"

#: Security events (logging.audit_log): auth failures, refusals, rate-limit
#: closes, admin calls. One line each: ``<event>: key=value ...``.
AUDIT = logging.getLogger("aiosrv.audit")

#: One line per HTTP request and WebSocket upgrade (logging.access_log).
ACCESS = logging.getLogger("aiosrv.access")

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/[]*@+")


def _show(value: object) -> str:
    text = "-" if value is None else str(value)
    if text and all(c in _PLAIN for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


#: Most audit lines of one event per second; beyond, they are counted and
#: one line says how many were held back (a flood of bad tokens must not
#: flood the log).
AUDIT_LINES_PER_SECOND = 50

# event -> [second the count is for, lines written in it, lines held back]
_audit_window: dict[str, list[float]] = {}


def audit(enabled: bool, level: int, event: str, **fields: object) -> None:
    """Write one audit line, ``<event>: key=value ...`` (values with spaces
    quoted), if ``enabled`` (logging.audit_log); at most
    :data:`AUDIT_LINES_PER_SECOND` of one event a second. Callers never pass
    secrets."""
    if not enabled or not AUDIT.isEnabledFor(level):
        return
    second = float(int(time.monotonic()))
    window = _audit_window.get(event)
    if window is None or window[0] != second:
        if window is not None and window[2]:
            AUDIT.warning("%s: %d more lines held back in one second (limit %d a second)",
                          event, int(window[2]), AUDIT_LINES_PER_SECOND)  # fmt: skip
        window = _audit_window[event] = [second, 0.0, 0.0]
    if window[1] >= AUDIT_LINES_PER_SECOND:
        window[2] += 1
        return
    window[1] += 1
    AUDIT.log(level, "%s: %s", event, " ".join(f"{k}={_show(v)}" for k, v in fields.items()))


class LogFileError(Exception):
    """``logging.file`` cannot be opened (a missing permission, a directory)."""


def setup_logging(level: str, file: str | None = None) -> None:
    """Log to standard error and, with ``file``, to that file too; raises
    :class:`LogFileError` saying why when the file cannot be opened (standard
    error is set up by then)."""
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
    logger.setLevel(level.upper())
    logger.propagate = False
    if file:
        directory = os.path.dirname(file)
        try:
            if directory:
                os.makedirs(directory, exist_ok=True)
            fh = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if isinstance(exc, FileExistsError):  # makedirs met a file on the way
                reason = "Not a directory"
            where = f" ({exc.filename})" if exc.filename and exc.filename != file else ""
            raise LogFileError(
                f"cannot open the log file {file} (logging.file / LOG_FILE): {reason}{where}"
            ) from None
        fh.setFormatter(fmt)
        logger.addHandler(fh)
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
