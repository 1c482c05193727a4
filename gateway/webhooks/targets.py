"""Where a webhook may be sent: public addresses only, unless the operator allows private ones.

A webhook URL is chosen by whoever administers a workspace and the gateway
POSTs to it from inside the operator's network, so a URL naming a private,
loopback, link-local, unspecified, multicast or reserved address (the
cloud metadata service at 169.254.169.254, a database on 10.0.0.5, the
gateway's own admin port on 127.0.0.1) is refused unless
`BOOKBAG_WEBHOOK_ALLOW_PRIVATE` is on.

The host is checked twice: when the endpoint is created or its URL changed
(`check_url`: every address the name resolves to must be public; a name that
does not resolve yet is accepted, delivery decides), and at every delivery
(DNS can change): `PublicResolver` is the delivery client's resolver, so the
connection goes only to addresses that were checked (no gap for a rebinding
answer between check and connect), and an IP literal is checked directly.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import aiohttp

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class PrivateTarget(ValueError):
    """The URL's host is, or resolves to, an address webhooks may not reach."""


def is_public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return is_public(embedded)
    return address.is_global and not (
        address.is_private or address.is_loopback or address.is_link_local
        or address.is_unspecified or address.is_multicast or address.is_reserved)


def literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def refuse(host: str, address: Address | str) -> PrivateTarget:
    return PrivateTarget(
        f"webhook host {host[:100]!r} is at {address}, a private, loopback, link-local or "
        "otherwise non-public address (BOOKBAG_WEBHOOK_ALLOW_PRIVATE allows it)")


def check_host(host: str) -> None:
    """Refuse a host that is, or resolves to, a non-public address (blocking: DNS)."""
    address = literal(host)
    if address is not None:
        if not is_public(address):
            raise refuse(host, address)
        return
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return  # not resolvable now: every delivery resolves and checks it again
    except (UnicodeError, ValueError):
        raise PrivateTarget(f"webhook host {host[:100]!r} is not a valid host name") from None
    for info in infos:
        resolved = literal(str(info[4][0]))
        if resolved is None or not is_public(resolved):
            raise refuse(host, str(info[4][0]))


def check_url(url: str) -> None:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        raise PrivateTarget(f"a webhook URL must be an http(s) URL, got {url[:100]!r}") from None
    if not host:
        raise PrivateTarget(f"a webhook URL must name a host, got {url[:100]!r}")
    check_host(host)


def public_resolver() -> aiohttp.abc.AbstractResolver:
    """aiohttp's resolver, keeping only public addresses (none left: the delivery fails)."""
    from aiohttp.abc import AbstractResolver
    from aiohttp.resolver import DefaultResolver

    class PublicResolver(AbstractResolver):
        def __init__(self) -> None:
            self._inner = DefaultResolver()

        async def resolve(self, host: str, port: int = 0,
                          family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
            results = await self._inner.resolve(host, port, family)
            public = [r for r in results if (a := literal(str(r["host"]))) and is_public(a)]
            if not public:
                # errno and text: aiohttp keeps only these in its connection error.
                raise OSError(errno.EHOSTUNREACH,
                              str(refuse(host, results[0]["host"] if results else "nothing")))
            return public

        async def close(self) -> None:
            await self._inner.close()

    return PublicResolver()
