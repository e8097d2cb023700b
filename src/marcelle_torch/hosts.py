"""Host names a local server answers to. A server on loopback accepts only these in the Host
header: a page of another site whose name is made to resolve to 127.0.0.1 (DNS rebinding) sends
its own name, and is refused."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_host_names(host: str) -> list[str]:
    """The loopback names, and ``host`` itself when it is a name of its own (not a wildcard)."""
    name = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::") or name in LOOPBACK_NAMES:
        return list(LOOPBACK_NAMES)
    return [*LOOPBACK_NAMES, name]


def host_allowed(host_header: str | None, allowed: list[str]) -> bool:
    """Whether a Host header (``name`` or ``name:port``) names one of ``allowed`` ('*': any). A
    request without one is no browser's."""
    if "*" in allowed or host_header is None:
        return True
    host = host_header.lower()
    name = host[: host.index("]") + 1] if host.startswith("[") and "]" in host else host.split(":")[0]
    return name in allowed
