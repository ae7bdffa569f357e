"""Keystroke echo through the browser terminal, against a direct TTY exec.

The same stack as ``benchmarks.join`` (rootful Podman, the GitLab double, the
bot in-process, one ready workspace). A reviewer joins and two shells are
opened in the workspace, both ``rwctl shell`` for that reviewer, so the same
bash with the same readline echoes every key:

- Bot: the terminal WebSocket, as the join page opens it. Each key is sent as
  the page sends it (a text frame ``{"type": "input", "data": "x"}``) and the
  bot writes it to its TTY exec through the Docker API; the echo comes back
  the same way as a binary frame. The client is ``websocket-client``, which
  speaks the same protocol as the page's browser WebSocket.
- Baseline: a TTY exec created directly on the same runtime with the docker SDK
  (``exec_create(tty=True, stdin=True)``, ``exec_start(socket=True)``), the
  key written to its socket.

One key at a time: the time from sending it to receiving its echo; then a
backspace (not timed) keeps the line empty. The two paths alternate in blocks
of ``--block`` keys. Goal: the bot's median at most 5 ms above the baseline's.

Run: ``.venv/bin/python -m benchmarks.echo [--keys 300] [--json out.json]``
(as root, with Podman installed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import websocket

from benchmarks import _report, join
from bot import accounts

log = logging.getLogger(__name__)

DIFFERENCE_GOAL_MS = 5.0
KEY = b"x"
BACKSPACE = b"\x7f"


class Line:
    """A terminal to type into: ``send`` one key, ``read_until`` its echo."""

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def recv(self, timeout: float) -> bytes:
        raise NotImplementedError

    def read_until(self, needle: bytes, timeout: float = 10.0) -> bytes:
        seen = b""
        deadline = time.monotonic() + timeout
        while needle not in seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not in {seen[-200:]!r}")
            seen += self.recv(max(0.05, deadline - time.monotonic()))
        return seen


class BotLine(Line):
    """The browser terminal's WebSocket."""

    def __init__(self, sock: websocket.WebSocket) -> None:
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.send(json.dumps({"type": "input", "data": data.decode()}))

    def recv(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        data = self.sock.recv()
        return data if isinstance(data, bytes) else data.encode()


class ExecLine(Line):
    """A TTY exec's hijacked connection to the runtime."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the exec's shell ended")
        return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keys",
        type=int,
        default=300,
        help="measured keys per path, after a warm-up (default 300)",
    )
    parser.add_argument(
        "--block",
        type=int,
        default=25,
        help="keys typed on one path before switching to the other",
    )
    parser.add_argument("--json", metavar="PATH", help="also write figures here")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problem = join.podman_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2

    with (
        tempfile.TemporaryDirectory(prefix="rwbot-bench-") as tmp,
        join.workspace_bench(Path(tmp)) as bench,
    ):
        latencies = measure(bench, options.keys, options.block)
    figures = _figures(latencies, options)
    print()
    print(figures["table"])
    print(figures["summary"])
    _report.write_json(options.json, figures)

    return 0


def measure(bench: join.Bench, keys: int, block: int) -> dict[str, list[float]]:
    """Seconds from sending a key to its echo, per path."""
    user = join.add_reviewer(bench, "typist")
    http, callback = join.start_sign_in(bench, user)
    http.get(callback, timeout=60).raise_for_status()  # follows on to the join page
    sock = join.open_terminal(bench, http)
    join.read_prompt(sock)
    name = _linux_name(bench, user)
    session = secrets.token_hex(16)
    exec_sock = _direct_shell(bench, name, session)
    lines: dict[str, Line] = {"bot": BotLine(sock), "direct": ExecLine(exec_sock)}
    try:
        for line in lines.values():
            _type(line, 20)  # warm-up
        latencies: dict[str, list[float]] = {path: [] for path in lines}
        order = list(lines)
        for index in range(-(-keys // block)):
            count = min(block, keys - index * block)
            # Alternate which goes first, so that a noisy neighbour hurts both.
            for path in order if index % 2 == 0 else order[::-1]:
                latencies[path] += _type(lines[path], count)
        for line in lines.values():
            # The keys reached the shell, which still runs commands.
            line.send(b"echo typed-$((6*7))\r")
            line.read_until(b"typed-42")
        log.info(
            "echo: %d keys per path, bot median %.2f ms, direct median %.2f ms",
            keys,
            _report.median(latencies["bot"]) * 1000,
            _report.median(latencies["direct"]) * 1000,
        )
    finally:
        bench.container.exec_run(accounts.end_argv(session), user="root")
        with contextlib.suppress(OSError):
            exec_sock.close()
        join.close_terminal(bench, sock, user["id"])

    return latencies


def _linux_name(bench: join.Bench, user: dict[str, Any]) -> str:
    from bot import provision
    from bot.runtime.base import WorkspaceKey

    key = WorkspaceKey(bench.project["id"], bench.mr["iid"])
    ws = provision.workspace(bench.stack.store, key)
    name = provision.member_name(bench.stack.store, ws, user["id"])
    if name is None:
        raise RuntimeError("the reviewer did not join")
    return name


def _direct_shell(bench: join.Bench, name: str, session: str) -> socket.socket:
    """``rwctl shell`` for ``name`` as a TTY exec of its own, up to the prompt."""
    api = bench.stack.docker.api
    created = api.exec_create(
        bench.container.id,
        accounts.shell_argv(name, session=session),
        tty=True,
        stdin=True,
        environment={"TERM": "xterm-256color"},
    )
    wrapped = api.exec_start(created["Id"], tty=True, socket=True)
    # docker-py hands back a SocketIO around the real socket for unix endpoints.
    raw: socket.socket = getattr(wrapped, "_sock", wrapped)
    api.exec_resize(created["Id"], height=24, width=80)
    line = ExecLine(raw)
    seen = b""
    deadline = time.monotonic() + 30
    while not (b"@ws-" in seen and seen.endswith(b"$ ")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no prompt in {seen[-300:]!r}")
        seen += line.recv(1.0)

    return raw


def _type(line: Line, count: int) -> list[float]:
    """Type ``count`` keys one at a time; each key's echo time in seconds."""
    timed = []
    for _ in range(count):
        start = time.perf_counter()
        line.send(KEY)
        line.read_until(KEY)
        timed.append(time.perf_counter() - start)
        line.send(BACKSPACE)
        line.read_until(b"\x08")  # readline moves back over the key

    return timed


def _figures(
    latencies: dict[str, list[float]], options: argparse.Namespace
) -> dict[str, Any]:
    bot = [v * 1000 for v in latencies["bot"]]
    direct = [v * 1000 for v in latencies["direct"]]
    difference = _report.median(bot) - _report.median(direct)
    rows = [
        _report.Row(
            f"echo, median of {len(bot)}",
            _report.median(bot),
            _report.median(direct),
            "ms",
            goal=f"<= +{DIFFERENCE_GOAL_MS:g} ms",
            met=difference <= DIFFERENCE_GOAL_MS,
        ),
        _report.Row(
            "echo, p99",
            _report.percentile(bot, 99),
            _report.percentile(direct, 99),
            "ms",
        ),
        _report.Row("echo, slowest", max(bot), max(direct), "ms"),
    ]
    machine = _report.machine()
    title = (
        "Keystroke echo: terminal WebSocket through the bot vs a direct TTY exec, "
        f"same rwctl shell on rootful Podman; {machine['cores']} cores, "
        f"{machine['date']}"
    )
    summary = (
        f"Difference of medians: {difference:+.2f} ms "
        f"(goal <= +{DIFFERENCE_GOAL_MS:g} ms: "
        f"{'met' if difference <= DIFFERENCE_GOAL_MS else 'MISSED'}); "
        f"p99 difference: "
        f"{_report.percentile(bot, 99) - _report.percentile(direct, 99):+.2f} ms."
    )

    return {
        "benchmark": "echo",
        "machine": machine,
        "options": vars(options),
        "table": _report.table(title, "direct exec", rows),
        "summary": summary,
        "difference_of_medians_ms": difference,
        "rows": [
            {
                "name": r.name,
                "bot": r.bot,
                "direct": r.baseline,
                "unit": r.unit,
                "ratio": r.ratio,
                "goal": r.goal,
                "met": r.met,
            }
            for r in rows
        ],
        "runs_ms": {"bot": bot, "direct": direct},
    }


if __name__ == "__main__":
    sys.exit(main())
