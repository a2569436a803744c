"""Logging to stderr: plain lines, with `<N>` syslog priorities when stderr is the journal."""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM=dev:ino for a unit's stderr (systemd.exec(5)); is it ours?"""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _Formatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if self.journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{msg}"
        if record.levelno >= logging.WARNING:
            return f"kheaders-pkg: {record.levelname.lower()}: {msg}"
        return f"kheaders-pkg: {msg}"


def setup(verbosity: int) -> logging.Logger:
    """verbosity: -1 quiet (errors), 0 warnings and notices, 1 info, 2 debug."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logger = logging.getLogger("kheaders-pkg")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(stderr_is_journal()))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
