"""host:port strings: where to dial a server from its bind address, and IPv6 brackets.

dial_host("0.0.0.0") == "127.0.0.1"; dial_host("::") == "::1"
host_port("::1", 50051) == "[::1]:50051"
"""

from __future__ import annotations

WILDCARDS_V4 = ("0.0.0.0", "")
WILDCARD_V6 = "::"


def dial_host(bind_host: str) -> str:
    """The host a process on the same machine dials to reach a server bound to `bind_host`:
    a wildcard bind (0.0.0.0, empty, ::) is reached on loopback of the same family; any
    other host (brackets taken off an IPv6 literal) is dialled as it is."""
    host = bind_host.strip("[]")
    if host in WILDCARDS_V4:
        return "127.0.0.1"
    if host == WILDCARD_V6:
        return "::1"
    return host


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 literal in brackets."""
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["dial_host", "host_port"]
