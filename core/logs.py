"""One logging set-up for every PoseLoop process: level from settings, the current request id / job id on every
line (from a context variable, so threads and asyncio tasks each carry their own), optional JSON lines for log
collectors. Processes call `setup_logging` once at start; code binds ids with `log_context(...)`."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

# (key, value) pairs: an immutable default, and each log_context block sets a new value
_CONTEXT: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "poseloop_log_context", default=()
)
_HANDLER_NAME = "poseloop"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"


@contextlib.contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Add ids (request_id=..., job_id=...) to every log line emitted inside the block."""
    merged = {**dict(_CONTEXT.get()), **{k: str(v) for k, v in ids.items() if v is not None}}
    token = _CONTEXT.set(tuple(merged.items()))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> dict[str, str]:
    """The ids bound here (request_id, job_id, …)."""
    return dict(_CONTEXT.get())


_base_factory = logging.getLogRecordFactory()


def _record_with_context(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every record carries the ids bound where it was created: `ids` (a dict) and `context` (" [k=v …]" or ""),
    whichever handler formats it (set as the record factory, so handlers added by others see them too)."""
    record = _base_factory(*args, **kwargs)
    ids = current_context()
    record.ids = ids
    record.context = " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]" if ids else ""
    return record


logging.setLogRecordFactory(_record_with_context)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the bound ids, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "ids", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Configure the root logger: one stderr handler (replacing the one an earlier call added, so calling it
    twice is harmless; handlers that others attached, e.g. pytest's, stay)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
