"""The servers' logs: plain text by default, or one JSON object per line (LOG_FORMAT=json) carrying each
request's fields (request id, route, status, code, bytes, milliseconds) for log pipelines to index."""

from __future__ import annotations

import json
import logging
import time

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


def configure_logging(log_format: str = "text") -> None:
    """Give edensplit's loggers a handler when the host (uvicorn) did not, in the format asked for."""
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
