"""Addresses: whether a host reaches this machine only, whether a server runs on this machine."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches this machine only (a name other than localhost counts as not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def on_this_host(url: str) -> bool:
    """Whether `url`'s server runs on this machine: a loopback address or localhost, or an address of one of
    this machine's interfaces (one a socket can be bound to here). A name is resolved once."""
    host = urlsplit(url).hostname or ""
    if is_loopback(host):
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    for family, _, _, _, address in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((address[0], 0))
        except OSError:
            return False
    return bool(infos)
