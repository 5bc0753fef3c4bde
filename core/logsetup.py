"""Logging of the ``otf2d`` command: plain text, text for journald, or one JSON object per line.

``--log-format`` (a global option: ``otf2d --log-format json engine …``):

- ``auto`` (default): text; without a timestamp when stderr is connected to the systemd journal
  (``JOURNAL_STREAM`` names stderr's device and inode, as systemd sets it), because journald
  stamps every line itself and two timestamps per line only confuse;
- ``text``: ``2026-12-07 06:00:00,123 INFO otf2d.engine.serving.cli: message``;
- ``json``: ``{"time": "2026-12-07T06:00:00.123+00:00", "level": "INFO", "logger": "otf2d.engine.serving.cli",
  "message": "…"}`` with ``"exception"`` when there is a traceback, for log shippers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

#: Choices of ``--log-format``.
LOG_FORMATS = ("auto", "text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (UTC time, level, logger, message, exception)."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def stderr_is_journal() -> bool:
    """Whether stderr is the systemd journal stream (``JOURNAL_STREAM=<dev>:<inode>`` of stderr)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return stat.st_dev == device and stat.st_ino == inode


def configure_logging(level: int, log_format: str = "auto") -> None:
    """Send log records to stderr at ``level`` in ``log_format`` (see the module docstring)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif log_format == "auto" and stderr_is_journal():
        handler.setFormatter(logging.Formatter(JOURNAL_FORMAT))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging", "stderr_is_journal"]
