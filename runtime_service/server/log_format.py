"""Log lines for people and for log pipelines: `--log-format text` puts a record's structured
fields after its message as key=value pairs, `--log-format json` writes one JSON object per line
(what Loki, Elasticsearch or Cloud Logging parse without rules). Structured fields travel in a
record's `kiln` attribute: `log.info("generate", extra={"kiln": {...}})`."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from runtime_service.errors import InvalidRequest

LOG_FORMATS = ("text", "json")


class KeyValueFormatter(logging.Formatter):
    """`time LEVEL logger message key=value ...`: the structured fields after the message."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "kiln", None)
        if fields:
            line += " " + " ".join(f"{k}={'-' if v is None else v}" for k, v in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc)
                 .isoformat(timespec="milliseconds"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        entry.update(getattr(record, "kiln", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """The process's root handler on stderr: `text` (key=value fields) or `json` lines."""
    if log_format not in LOG_FORMATS:
        raise InvalidRequest(f"--log-format must be text or json, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def active_log_format() -> str:
    """The format configure_logging gave this process ("text" if it has not run): what a child
    process it starts (the engine core) should write."""
    handlers = logging.getLogger().handlers
    return "json" if any(isinstance(h.formatter, JsonFormatter) for h in handlers) else "text"
