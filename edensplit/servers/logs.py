"""The servers' logs: plain text by default, or one JSON object per line (LOG_FORMAT=json) carrying each
request's fields (request id, route, status, code, bytes, milliseconds) for log pipelines to index."""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Any

FIELDS = ("request_id", "transport", "method", "route", "path", "type", "status", "code", "bytes_in", "bytes_out",
          "ms", "client")


class JsonFormatter(logging.Formatter):
    """A record as one JSON line: time, level, logger, message, the request fields it carries, and the
    traceback of an exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        line.update({k: getattr(record, k) for k in FIELDS if hasattr(record, k)})
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def configure_logging(log_format: str = "text", *, own_process: bool = False) -> None:
    """Give edensplit's loggers a handler when the host (uvicorn) did not, in the format asked for. In JSON, the
    host's lines are JSON too: uvicorn's handlers (set up before it imports the app: `uvicorn module:app`) get the
    JSON formatter, so a log pipeline reads every line of the server's log as one object; and where the process
    is edensplit's own (`edensplit cloud|edge`, whose root handler edensplit's records propagate to), so do the
    root logger's handlers."""
    ours = logging.getLogger("edensplit")
    ours.setLevel(logging.INFO)
    formatter = JsonFormatter() if log_format == "json" else \
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if ours.handlers:
        for handler in ours.handlers:
            handler.setFormatter(formatter)
    elif not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        ours.addHandler(handler)
    if log_format == "json":
        for handler in logging.getLogger().handlers if own_process else ():
            handler.setFormatter(JsonFormatter())
        for name in UVICORN_LOGGERS:
            for handler in logging.getLogger(name).handlers:
                handler.setFormatter(JsonFormatter())


def uvicorn_log_config(log_format: str = "text") -> dict[str, Any]:
    """uvicorn's own logging config for `uvicorn.run` (which applies it after the app is built, undoing what
    `configure_logging` did to its handlers): as it is, with its formatters JSON under LOG_FORMAT=json."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    if log_format == "json":
        config["formatters"] = {name: {"()": f"{__name__}.JsonFormatter"} for name in config["formatters"]}
    return config
