"""A reviewer's live session without a browser: sign-in and the terminal socket.

``signed_in`` follows the join link through the GitLab double's OAuth sign-in
with ``requests``, exactly as a browser would (redirects, cookies); ``terminal``
then opens the same WebSocket that xterm.js opens. Tests use these to hold a
real session open while something else happens to the workspace.
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests
import websocket


def join_path(project: dict[str, Any], mr: dict[str, Any]) -> str:
    return f"/w/{project['id']}/{mr['iid']}"


def signed_in(
    stack: Any, project: dict[str, Any], mr: dict[str, Any], user: dict[str, Any]
) -> requests.Session:
    """A requests session that followed the join link through sign-in."""
    stack.gitlab.login_as(user)
    http = requests.Session()
    r = http.get(stack.url + join_path(project, mr), timeout=30)
    assert r.status_code == 200, r.text
    return http


def cookie_header(http: requests.Session) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in http.cookies)


def ws_url(stack: Any, project: dict[str, Any], mr: dict[str, Any]) -> str:
    return stack.url.replace("http://", "ws://") + join_path(project, mr) + "/tty"


def terminal(
    stack: Any, project: dict[str, Any], mr: dict[str, Any], user: dict[str, Any]
) -> websocket.WebSocket:
    """Sign ``user`` in and open their terminal, waiting for the shell to answer."""
    return open_terminal(stack, project, mr, signed_in(stack, project, mr, user))


def open_terminal(
    stack: Any, project: dict[str, Any], mr: dict[str, Any], http: requests.Session
) -> websocket.WebSocket:
    """Open the terminal of an already signed-in session; wait for the shell."""
    sock = websocket.create_connection(
        ws_url(stack, project, mr),
        origin=stack.url,
        cookie=cookie_header(http),
        timeout=30,
    )
    type_in(sock, "echo R$((6*7))\n")
    read_until(sock, "R42")
    return sock


def type_in(sock: websocket.WebSocket, text: str) -> None:
    sock.send(json.dumps({"type": "input", "data": text}))


def read_until(sock: websocket.WebSocket, needle: str, timeout: float = 30) -> str:
    """Collect terminal output until ``needle`` shows up."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle.encode() not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in {seen[-500:]!r}")
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        data = sock.recv()
        seen += data if isinstance(data, bytes) else data.encode()
    return seen.decode(errors="replace")


def read_to_end(sock: websocket.WebSocket, timeout: float = 30) -> str:
    """Everything until the bot closes the socket; fails if it stays open."""
    seen = b""
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise AssertionError(f"the terminal stayed open: {seen[-500:]!r}")
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = sock.recv()
        except websocket.WebSocketConnectionClosedException:
            break
        if not data:  # a close frame
            break
        seen += data if isinstance(data, bytes) else data.encode()
    return seen.decode(errors="replace")
