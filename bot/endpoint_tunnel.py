"""WebSocket connections to a workspace's endpoint, passed through as bytes.

Dev servers push live reloads over a WebSocket on their own port, which the
page they serve opens on the endpoint's host. :mod:`bot.endpoint_proxy` checks
the viewer's cookie and the page's ``Origin``, then hands the connection to
this module: the upgrade request goes to the workspace, and if the workspace
answers ``101 Switching Protocols`` that answer goes back to the browser as it
came and from then on bytes are copied both ways, unread. Handshake,
subprotocol and extensions stay between the browser and the workspace's own
server, as through any reverse proxy; the bot neither speaks nor needs to
understand the protocol its viewer and the workspace agreed on.

The browser's connection is taken over from the WSGI server — the socket that
gunicorn and werkzeug put in the environ, which flask-sock uses for the
terminal too — and holds one of the server's threads while it lasts.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Mapping
from typing import Any

from werkzeug.wrappers import Response

from bot.runtime.base import EndpointTarget

#: Largest head of the workspace's answer to a handshake, in bytes.
MAX_HEAD = 16 * 1024
#: Seconds the workspace has to accept the connection, and then to answer it.
CONNECT_TIMEOUT = 5.0
ANSWER_TIMEOUT = 10.0
#: Seconds one side may leave the other's bytes unread before both are closed.
SEND_TIMEOUT = 30.0
_CHUNK = 64 * 1024


class Unanswered(Exception):
    """The workspace did not answer the handshake with an HTTP head."""


def client_socket(environ: Mapping[str, Any]) -> socket.socket | None:
    """The viewer's connection, where the WSGI server offers it."""
    for name in ("gunicorn.socket", "werkzeug.socket"):
        sock = environ.get(name)
        if isinstance(sock, socket.socket):
            return sock
    return None


def handshake(
    target: EndpointTarget, path: str, headers: Mapping[str, str]
) -> tuple[socket.socket, int, bytes]:
    """Send the upgrade request for ``path``; the open connection, the status
    the workspace answered and the bytes read so far (its head, and any of the
    new protocol's that came with it).

    Header values come from a parsed request and cannot hold line breaks;
    one that does is refused all the same, since it would split the request.
    """
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    if any("\r" in line or "\n" in line for line in lines):
        raise ValueError("a header holds a line break")
    sent = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    upstream = socket.create_connection(
        (target.host, target.port), timeout=CONNECT_TIMEOUT
    )
    try:
        upstream.settimeout(ANSWER_TIMEOUT)
        upstream.sendall(sent)
        read = b""
        while b"\r\n\r\n" not in read:
            if len(read) > MAX_HEAD:
                raise Unanswered("the answer's head is too long")
            chunk = upstream.recv(_CHUNK)
            if not chunk:
                raise Unanswered("the connection was closed before an answer")
            read += chunk
        status = _status(read)
    except BaseException:
        upstream.close()
        raise
    return upstream, status, read


def _status(head: bytes) -> int:
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise Unanswered("the answer is not HTTP/1.x")
    return int(parts[1])


def splice(viewer: socket.socket, upstream: socket.socket, until: float) -> int:
    """Copy bytes both ways until a side closes, a send stalls for
    :data:`SEND_TIMEOUT` or the clock passes ``until``; then close both.
    Returns the number of bytes copied."""
    copied = 0
    try:
        with selectors.DefaultSelector() as selector:
            for sock, other in ((viewer, upstream), (upstream, viewer)):
                sock.settimeout(SEND_TIMEOUT)
                selector.register(sock, selectors.EVENT_READ, other)
            while (left := until - time.time()) > 0:
                for key, _ in selector.select(timeout=left):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(_CHUNK)
                    if not data:
                        return copied
                    key.data.sendall(data)
                    copied += len(data)
    except OSError:
        pass  # a side went away or stalled: the end of this connection
    finally:
        hang_up(viewer)
        upstream.close()
    return copied


def hang_up(viewer: socket.socket) -> None:
    """End the viewer's connection for the WSGI server as well, which would
    otherwise wait on it for a next request."""
    with contextlib.suppress(OSError):  # already gone
        viewer.shutdown(socket.SHUT_RDWR)


class TakenOver(Response):
    """What a view returns once it has answered on the socket itself: the
    WSGI server must send nothing more and drop the connection, which gunicorn
    does on ``StopIteration`` and werkzeug on ``ConnectionError``."""

    def __init__(self) -> None:
        super().__init__(status=101)

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if "gunicorn.socket" in environ:
            raise StopIteration
        raise ConnectionError("the connection was taken over")
