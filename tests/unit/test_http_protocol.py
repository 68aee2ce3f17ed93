"""The served HTTP protocol turns Nagle's algorithm off on every connection,
also on sockets bound the way `uvicorn --workers N` binds them (protocol 0),
where asyncio itself leaves it on (each response then waited ~40 ms)."""

import socket

import uvicorn
from uvicorn.server import ServerState

from api.http_protocol import NoDelayHTTPProtocol


class Transport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str, default=None):
        return {
            "socket": self.sock,
            "peername": self.sock.getpeername(),
            "sockname": self.sock.getsockname(),
        }.get(name, default)

    def is_closing(self) -> bool:
        return False


async def test_connections_accepted_on_a_multi_worker_socket_get_tcp_nodelay():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0, as uvicorn binds
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        config = uvicorn.Config(app=lambda scope, receive, send: None)
        config.load()
        protocol = NoDelayHTTPProtocol(config=config, server_state=ServerState(), app_state={})
        protocol.connection_made(Transport(accepted))
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        for sock in (client, accepted, listener):
            sock.close()
