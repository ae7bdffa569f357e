"""A WSGI app that hands each upgrade request's connection to an upstream, as
the endpoint proxy does, small enough to run under a real gunicorn and a real
werkzeug server in :mod:`tests.test_endpoint_tunnel`.

``GET /plain`` is answered the ordinary way, to show the server still serves
after a connection was taken over; anything else is passed to the server on
loopback at ``$TUNNEL_UPSTREAM_PORT``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from bot import endpoint_tunnel
from bot.runtime.base import EndpointTarget


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/plain":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"plain"]
    viewer = endpoint_tunnel.client_socket(environ)
    assert viewer is not None, "the server offers no socket"
    target = EndpointTarget("127.0.0.1", int(os.environ["TUNNEL_UPSTREAM_PORT"]))
    headers = {"Host": "upstream", "Upgrade": "websocket", "Connection": "Upgrade"}
    upstream, _status, head = endpoint_tunnel.handshake(
        target, environ["PATH_INFO"], headers
    )
    viewer.sendall(head)
    endpoint_tunnel.splice(viewer, upstream, time.time() + 60)
    result: Iterable[bytes] = endpoint_tunnel.TakenOver()(environ, start_response)
    return result
