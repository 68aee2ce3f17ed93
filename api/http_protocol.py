"""The HTTP protocol uvicorn serves with: uvicorn's own, with TCP_NODELAY set
on every connection.

With `--workers N` uvicorn binds the listening socket itself, with protocol
number 0, and asyncio sets TCP_NODELAY only on sockets whose protocol is
IPPROTO_TCP; the accepted connections then keep Nagle's algorithm, and a
response written in two parts (head, then body) waits for the client's
delayed ACK: about 40 ms on every request. Setting the option here makes
any number of workers answer as fast as one."""

import contextlib
import socket

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class NoDelayHTTPProtocol(AutoHTTPProtocol):
    def connection_made(self, transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


PROTOCOL = f"{__name__}:NoDelayHTTPProtocol"  # as uvicorn's `http` option
