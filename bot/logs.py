"""Logging set up once at the entry point: plain or JSON lines on stderr.

Modules log through ``logging.getLogger(__name__)`` with constant messages and
the varying parts in ``extra`` fields; this module renders those fields. A
filter masks every configured secret wherever it appears, so a token that slips
into an exception message still never reaches the log.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from typing import Any

# Attributes every LogRecord has; anything else came in through ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self.formatTime(record)} {record.levelname} {record.name}: "
            f"{record.getMessage()}"
        )
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={v!r}" for k, v in sorted(fields.items()))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class MaskSecrets(logging.Filter):
    """Replace secrets in the message, its arguments and extra fields."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s and len(s) >= 4]

    def _mask(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, "[MASKED]")
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        record.msg = self._mask(record.msg)
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(self._mask(a) for a in args)
        for key, value in _fields(record).items():
            setattr(record, key, self._mask(value))
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now, masked, instead of letting the formatter
            # print the raw exception text later.
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
            record.msg = f"{record.msg}\n{self._mask(text)}"
        return True


def configure(fmt: str, level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    handler.addFilter(MaskSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries' debug output can include request headers (tokens): keep it out.
    for noisy in ("urllib3", "requests", "docker", "gitlab"):
        logging.getLogger(noisy).setLevel(
            max(logging.INFO, logging.getLevelName(level))
        )
