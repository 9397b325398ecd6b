"""Access control: who may use a server, and as which client.

- No key (neither EDENSPLIT_API_KEY nor EDENSPLIT_API_KEYS_FILE): every request is the client `anonymous`.
- EDENSPLIT_API_KEY: one client, `default`, with that key (an empty key refuses to start: it would open the server).
- EDENSPLIT_API_KEYS_FILE: one client a line, `<name> <key>` separated by white space; blank lines and `#`
  comments ignored. The file is read again when it changes (its modification checked at most once a second, in
  every process that serves: uvicorn, gunicorn workers, Ray replicas) and at once on `reload()` (SIGHUP in a
  uvicorn process): keys added or removed take effect without a restart; requests already admitted finish.

With a key, every route but /health* (so /metrics too: Prometheus sends it with its `authorization` scrape
setting) requires `Authorization: Bearer <key>`, over HTTP (checked before the body is read) and on the WebSocket
handshake alike; anything else is 401 UNAUTHORIZED. The key is compared with every client's in the same time
whatever is sent, and never logged: requests are known by their client's name (sessions and idempotency keys are
per client, logs, traces and metrics name it).
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Security
from fastapi.security import HTTPBearer

from edensplit.errors import ConfigError, EdenError, ErrorCode

log = logging.getLogger("edensplit.server")
OPEN_PREFIX = "/health"
ANONYMOUS = "anonymous"  # every request of a server without a key
DEFAULT = "default"  # the one client of EDENSPLIT_API_KEY
NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")
CHECK_EVERY_S = 0.5  # looked at twice a second: a changed keys file is noticed within a second (README)


def bearer_token(authorization: str | None) -> str:
    """The token of `Authorization: Bearer <token>` ('' for anything else)."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def bearer_matches(authorization: str | None, key: str) -> bool:
    return hmac.compare_digest(bearer_token(authorization).encode(), key.encode())


def parse_keys(text: str, source: str) -> dict[str, str]:
    """{key: client name} from a keys file's text; ConfigError naming the line (never the key) if one is bad."""
    keys: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"{source} line {number}: expected `<name> <key>`, got {len(parts)} field(s)")
        name, key = parts
        if not NAME.fullmatch(name):
            raise ConfigError(f"{source} line {number}: a client name is 1-64 of A-Z a-z 0-9 . _ : -")
        if key in keys:
            raise ConfigError(f"{source} line {number}: {name}'s key is also {keys[key]}'s")
        if name in keys.values():
            raise ConfigError(f"{source} line {number}: client {name} is named twice")
        keys[key] = name
    return keys


class Access:
    """The clients a server knows, by key: `client(path, authorization)` names the caller or refuses it."""

    def __init__(self, key: str | None = None, keys_file: str | Path | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if key is not None and not key.strip():
            raise ConfigError("EDENSPLIT_API_KEY is set but empty: unset it to serve without a key, or give a key")
        if key is not None and keys_file:
            raise ConfigError("set EDENSPLIT_API_KEY or EDENSPLIT_API_KEYS_FILE, not both")
        self.path = Path(keys_file) if keys_file else None
        self.clock = clock
        self._keys: dict[str, str] = {key.strip(): DEFAULT} if key is not None else {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = clock()
        self._lock = threading.Lock()
        if self.path is not None:
            self.reload(strict=True)

    @property
    def enabled(self) -> bool:
        """Whether requests need a key."""
        return bool(self._keys) or self.path is not None

    def names(self) -> list[str]:
        """The clients' names (what the metrics' client_name label takes, with `anonymous`)."""
        return sorted(self._keys.values())

    def reload(self, strict: bool = False) -> None:
        """Read the keys file again. A file that cannot be read or parsed keeps the keys in use (logged), except
        at start-up (`strict`), where it is the server's configuration error."""
        assert self.path is not None
        try:
            stat = self.path.stat()
            keys = parse_keys(self.path.read_text(), str(self.path))
        except (OSError, ConfigError) as exc:
            message = exc.message if isinstance(exc, ConfigError) else f"cannot read {self.path}: {exc.strerror}"
            if strict:
                raise ConfigError(f"EDENSPLIT_API_KEYS_FILE: {message}") from None
            log.warning("EDENSPLIT_API_KEYS_FILE: %s; the %d keys in use are kept", message, len(self._keys))
            return
        with self._lock:
            changed = set(keys.values()) != set(self._keys.values()) or keys != self._keys
            self._keys, self._stamp = keys, (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if changed and not strict:
            log.info("EDENSPLIT_API_KEYS_FILE reloaded: %d clients", len(keys))

    def _check_file(self) -> None:
        """Reload the keys file if it changed (looked at at most once every CHECK_EVERY_S seconds)."""
        now = self.clock()
        if self.path is None or now - self._checked < CHECK_EVERY_S:
            return
        self._checked = now
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self.reload()

    def client(self, path: str, authorization: str | None) -> str:
        """The caller's client name: `anonymous` on a server without a key (or an open route asked without one),
        its client's name for a known key; UNAUTHORIZED otherwise."""
        if not self.enabled:
            return ANONYMOUS
        self._check_file()
        token = bearer_token(authorization).encode()
        found = None
        for key, name in list(self._keys.items()):  # every key compared: the time does not tell which matched
            if hmac.compare_digest(token, key.encode()):
                found = name
        if found is not None:
            return found
        if path.startswith(OPEN_PREFIX):
            return ANONYMOUS
        raise EdenError("this server requires Authorization: Bearer <key> (the client sends EDENSPLIT_API_KEY or "
                        "--api_key)", code=ErrorCode.UNAUTHORIZED)


def access_from_environment() -> Access:
    """The Access of EDENSPLIT_API_KEY / EDENSPLIT_API_KEYS_FILE, for processes without settings (a proxy)."""
    return Access(os.environ.get("EDENSPLIT_API_KEY"), os.environ.get("EDENSPLIT_API_KEYS_FILE") or None)


def guarded(path: str, keyed: bool) -> bool:
    """Whether a server with keys (`keyed`) asks for one on `path`."""
    return keyed and not path.startswith(OPEN_PREFIX)


def access_errors(path: str, keyed: bool) -> tuple[ErrorCode, ...]:
    """What the access check can refuse a request to `path` with, for the documentation: without keys, a Host
    that is not the server's address (INVALID_HOST); with keys, no known one (UNAUTHORIZED)."""
    if not keyed:
        return (ErrorCode.INVALID_HOST,)
    return (ErrorCode.UNAUTHORIZED,) if guarded(path, keyed) else ()


def bearer_scheme(path: str, keyed: bool) -> list[Any]:
    """Route dependencies that document the bearer scheme on a guarded route (OpenAPI `security`); they check
    nothing: the pipeline has refused a request without a key before the route runs."""
    return [Security(HTTPBearer(auto_error=False, description="a client's key"))] if guarded(path, keyed) else []
