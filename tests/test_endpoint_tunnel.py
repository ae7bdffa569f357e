"""The byte tunnel behind endpoint WebSockets (:mod:`bot.endpoint_tunnel`).

Against servers on loopback that answer a handshake with what a test scripts:
the status of an ordinary answer, a head that never ends or is not HTTP, a
closed connection, a header that would split the request. ``splice`` copies
both ways, ends when a side closes or its time is up, and hangs up both.
Under a real gunicorn (gthread, as ``rwbot serve`` and the chart run it) and a
real werkzeug server (as the tests' in-process bot runs), a taken-over
connection gets the upstream's bytes and nothing of the server's own, and the
server goes on serving.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from bot import endpoint_tunnel
from bot.runtime.base import EndpointTarget
from tests import services, tunnel_app

ROOT = Path(__file__).resolve().parent.parent
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"


@contextlib.contextmanager
def upstream(serve: Callable[[socket.socket, bytes], None]) -> Iterator[int]:
    """A loopback server that reads each request's head and hands it, with
    its connection, to ``serve``; its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_serve_one, args=(serve, conn), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


def _serve_one(
    serve: Callable[[socket.socket, bytes], None], conn: socket.socket
) -> None:
    with conn:
        serve(conn, _read_head(conn))


def _read_head(conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def shouting(conn: socket.socket, head: bytes) -> None:
    """Switch protocols, greet, then send back in capitals what comes, until
    ``bye`` or the end."""
    conn.sendall(SWITCHED + b"greeting")
    while data := conn.recv(4096):
        conn.sendall(data.upper())
        if data.endswith(b"bye"):
            return


def target(port: int) -> EndpointTarget:
    return EndpointTarget("127.0.0.1", port)


def test_an_ordinary_answer_gives_its_status_and_switched_protocols_101():
    with upstream(lambda c, _: c.sendall(b"HTTP/1.1 404 Not Found\r\n\r\n")) as port:
        sock, status, head = endpoint_tunnel.handshake(target(port), "/", {})
        sock.close()
    assert status == 404 and head == b"HTTP/1.1 404 Not Found\r\n\r\n"

    with upstream(shouting) as port:
        sock, status, head = endpoint_tunnel.handshake(target(port), "/", {})
        with sock:
            while not head.endswith(b"greeting"):
                head += sock.recv(4096)
    assert status == 101 and head == SWITCHED + b"greeting"


def test_the_request_carries_the_path_and_headers():
    seen: list[bytes] = []

    def record(conn: socket.socket, head: bytes) -> None:
        seen.append(head)
        conn.sendall(SWITCHED)

    headers = {"Host": "web.example", "Sec-WebSocket-Protocol": "vite-hmr"}
    with upstream(record) as port:
        sock, status, _ = endpoint_tunnel.handshake(target(port), "/hmr?t=1", headers)
        sock.close()
    assert status == 101
    assert seen == [
        b"GET /hmr?t=1 HTTP/1.1\r\nHost: web.example\r\n"
        b"Sec-WebSocket-Protocol: vite-hmr\r\n\r\n"
    ]


@pytest.mark.parametrize(
    ("answer", "hold"),
    [
        (b"", False),  # closed at once
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", False),
        (b"HTTP/1.1 abc\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nX-Filler: " + b"y" * 20_000, True),  # never ends
    ],
)
def test_what_is_no_http_answer_is_unanswered(answer, hold):
    def answering(conn: socket.socket, head: bytes) -> None:
        conn.sendall(answer)
        if hold:
            conn.recv(1)  # until the bot gives up and closes

    with (
        upstream(answering) as port,
        pytest.raises(endpoint_tunnel.Unanswered),
    ):
        endpoint_tunnel.handshake(target(port), "/", {})


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent():
    with pytest.raises(ValueError):
        endpoint_tunnel.handshake(target(1), "/", {"X-A": "b\r\nX-Injected: 1"})
    with pytest.raises(ValueError):
        endpoint_tunnel.handshake(target(1), "/ HTTP/1.1\r\nX: y", {})


def test_nothing_listening_is_an_os_error():
    with pytest.raises(OSError):
        endpoint_tunnel.handshake(target(services.free_port()), "/", {})


def test_splice_copies_both_ways_and_hangs_up_both_when_one_side_closes():
    viewer, viewer_far = socket.socketpair()
    work, work_far = socket.socketpair()
    copied: list[int] = []
    thread = threading.Thread(
        target=lambda: copied.append(
            endpoint_tunnel.splice(viewer, work, time.time() + 60)
        )
    )
    thread.start()
    viewer_far.sendall(b"x" * 200_000)
    assert _read_exactly(work_far, 200_000) == b"x" * 200_000
    work_far.sendall(b"answer")
    assert _read_exactly(viewer_far, 6) == b"answer"
    work_far.close()
    thread.join(10)
    assert copied == [200_006]
    assert viewer_far.recv(10) == b""  # the viewer is hung up on too
    viewer_far.close()


def test_splice_ends_when_its_time_is_up():
    viewer, viewer_far = socket.socketpair()
    work, work_far = socket.socketpair()
    thread = threading.Thread(
        target=endpoint_tunnel.splice, args=(viewer, work, time.time() + 0.5)
    )
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert viewer_far.recv(10) == b"" and work_far.recv(10) == b""
    viewer_far.close()
    work_far.close()


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(30)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


@pytest.fixture
def gunicorn(tmp_path):
    """``tests.tunnel_app`` under gunicorn's gthread worker; its port."""

    @contextlib.contextmanager
    def run(upstream_port: int) -> Iterator[tuple[int, Path]]:
        port = services.free_port()
        log = tmp_path / "gunicorn.log"
        env = {**os.environ, "TUNNEL_UPSTREAM_PORT": str(upstream_port)}
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "gthread",
            "--threads",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "tests.tunnel_app:app",
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
        try:
            services.wait_for(
                lambda: _plain(port), timeout=60, what="gunicorn to answer"
            )
            yield port, log
        finally:
            proc.terminate()
            proc.wait(20)

    return run


@pytest.fixture
def werkzeug_server(monkeypatch):
    @contextlib.contextmanager
    def run(upstream_port: int) -> Iterator[tuple[int, None]]:
        monkeypatch.setenv("TUNNEL_UPSTREAM_PORT", str(upstream_port))
        server = make_server("127.0.0.1", 0, tunnel_app.app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_port, None
        finally:
            server.shutdown()

    return run


def _plain(port: int) -> bool:
    try:
        r = requests.get(f"http://127.0.0.1:{port}/plain", timeout=5)
    except requests.ConnectionError:
        return False
    return r.status_code == 200 and r.text == "plain"


@pytest.mark.parametrize("server", ["gunicorn", "werkzeug_server"])
def test_a_taken_over_connection_carries_only_the_upstreams_bytes(request, server):
    with (
        upstream(shouting) as upstream_port,
        request.getfixturevalue(server)(upstream_port) as (port, log),
    ):
        for _ in range(3):  # more than the server has threads: each is given back
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(
                    b"GET /live HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\n"
                )
                assert _read_exactly(sock, len(SWITCHED) + 8) == SWITCHED + b"greeting"
                sock.sendall(b"hello")
                assert _read_exactly(sock, 5) == b"HELLO"
                sock.sendall(b"bye")
                assert _read_exactly(sock, 3) == b"BYE"
                assert sock.recv(4096) == b""  # and nothing of the server's own
            assert _plain(port)
        if log is not None:
            text = log.read_text()
            assert "Error handling request" not in text and "Traceback" not in text
