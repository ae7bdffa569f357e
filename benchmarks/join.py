"""Joining a workspace through the bot, against the bare execs a join cannot avoid.

One review workspace runs on rootful Podman (started here through
``tests.services.podman_service``) for a merge request on the GitLab double; the
bot runs in-process (``tests.harness.Stack``). Reviewers are driven with
``requests`` and ``websocket-client``, which speak the same HTTP and WebSocket
protocol as the join page in a browser. Two figures, each per repetition:

1. First join, by a new reviewer every time: from sending the OAuth callback
   (``GET /auth/callback?code=…&state=…``, reached by following the sign-in
   redirects) until the shell prompt arrives on the terminal WebSocket. It
   covers the token exchange, user info, access check, SSH keys, ``rwctl
   adduser``, the join page, the WebSocket handshake and ``rwctl shell``.
2. Second join, by the same reviewer (already signed in, account exists): from
   requesting the join page until the prompt.

Baselines, on the same runtime and container through the docker SDK: for the
first join ``exec useradd -m NAME`` then ``exec whoami`` as NAME; for the second
``exec id -u NAME`` then ``exec whoami`` as NAME: confirm the account, then run
something as it, the two runtime round trips any join needs. Bot and baseline
alternate within each repetition. Goals: first join at most 3x, second join at
most 2x the baseline (ratio of medians).

Run: ``.venv/bin/python -m benchmarks.join [--repeat 15] [--json out.json]``
(as root, with Podman installed).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import websocket

from benchmarks import _report
from bot import accounts

log = logging.getLogger(__name__)

FIRST_GOAL = 3.0  # bot / baseline, medians
SECOND_GOAL = 2.0
#: Terminal size the join page would ask for.
TERMINAL_QUERY = "?rows=24&cols=80"


@dataclass
class Bench:
    """A running stack with one ready workspace, and what reaches into it."""

    stack: Any  # tests.harness.Stack
    project: dict[str, Any]
    mr: dict[str, Any]
    container: Any  # docker.models.containers.Container

    @property
    def join_url(self) -> str:
        return f"{self.stack.url}/w/{self.project['id']}/{self.mr['iid']}"

    @property
    def socket_url(self) -> str:
        return self.join_url.replace("http://", "ws://", 1) + "/tty" + TERMINAL_QUERY


@dataclass
class Joins:
    """Seconds per repetition, and the bot's phases (name -> seconds)."""

    first: list[float] = field(default_factory=list)
    second: list[float] = field(default_factory=list)
    bare_first: list[float] = field(default_factory=list)
    bare_second: list[float] = field(default_factory=list)
    bare_one_exec: list[float] = field(default_factory=list)
    first_phases: list[dict[str, float]] = field(default_factory=list)
    second_phases: list[dict[str, float]] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat",
        type=int,
        default=15,
        help="measured joins of each kind, after one warm-up (default 15)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write figures here")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problem = podman_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2

    with (
        tempfile.TemporaryDirectory(prefix="rwbot-bench-") as tmp,
        workspace_bench(Path(tmp)) as bench,
    ):
        joins = measure(bench, options.repeat)
    figures = _figures(joins, options)
    print()
    print(figures["table"])
    print(figures["phases_text"])
    _report.write_json(options.json, figures)

    return 0


# -- the stack ------------------------------------------------------------------


def podman_problem() -> str:
    """Why the Podman service cannot be started here, or ""."""
    if shutil.which("podman") is None:
        return "podman is missing: apt-get install -y podman"
    if os.geteuid() != 0:
        return "run as root: the workspaces need rootful Podman"
    return ""


@contextlib.contextmanager
def workspace_bench(tmp: Path) -> Iterator[Bench]:
    """Podman, the GitLab double, the bot, and one ready workspace."""
    # Imported here: tests.* pulls in pytest, which only these benchmarks need.
    from tests import harness, services
    from tests.gitlab_double import DEVELOPER

    with _quiet_bot(tmp / "bot.log"), services.podman_service() as docker_host:
        stack = harness.Stack(docker_host, tmp)
        try:
            project = stack.gitlab.add_project("team/app")
            author = stack.gitlab.add_user("author")
            stack.gitlab.set_member(project, author, DEVELOPER)
            mr = stack.gitlab.open_mr(
                project, "feature", {"a.txt": "a\n"}, author=author
            )
            stack.deliver(stack.gitlab.mr_hook(mr, "open"))
            stack.settle()
            (container,) = stack.containers(mr)
            log.info("workspace ready", extra={"container": container.name})
            yield Bench(stack, project, mr, container)
        finally:
            stack.close()


class _Count(logging.Handler):
    """Counts the bot's log records with one message."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == self.message:
            self.seen += 1


#: The terminal handler's last step logs "terminal closed" (``bot.terminal``).
TERMINALS_CLOSED = _Count("terminal closed")


@contextlib.contextmanager
def _quiet_bot(path: Path) -> Iterator[None]:
    """The bot logs at INFO, as in production, but to a file; werkzeug's request
    lines are dropped. Other benchmarks may run afterwards: restore on exit."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    bot_log, werkzeug_log = logging.getLogger("bot"), logging.getLogger("werkzeug")
    saved = bot_log.level, bot_log.propagate, werkzeug_log.level
    bot_log.addHandler(handler)
    bot_log.addHandler(TERMINALS_CLOSED)
    bot_log.setLevel(logging.INFO)
    bot_log.propagate = False
    werkzeug_log.setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        yield
    finally:
        bot_log.removeHandler(handler)
        bot_log.removeHandler(TERMINALS_CLOSED)
        handler.close()
        bot_log.setLevel(saved[0])
        bot_log.propagate = saved[1]
        werkzeug_log.setLevel(saved[2])


def add_reviewer(bench: Bench, username: str) -> dict[str, Any]:
    from tests.gitlab_double import DEVELOPER

    user: dict[str, Any] = bench.stack.gitlab.add_user(username)
    bench.stack.gitlab.set_member(bench.project, user, DEVELOPER)

    return user


def start_sign_in(bench: Bench, user: dict[str, Any]) -> tuple[requests.Session, str]:
    """Follow the join link up to GitLab's redirect back to the bot.

    Returns the browser session and the callback URL, not yet requested.
    """
    bench.stack.gitlab.login_as(user)
    http = requests.Session()
    url = bench.join_url
    for _ in range(5):
        r = http.get(url, allow_redirects=False, timeout=30)
        if r.status_code != 302:
            raise RuntimeError(f"sign-in stopped at {r.status_code} from {url}")
        url = requests.compat.urljoin(url, r.headers["Location"])
        if "/auth/callback?" in url:
            return http, url
    raise RuntimeError("sign-in never reached the callback")


def open_terminal(bench: Bench, http: requests.Session) -> websocket.WebSocket:
    cookie = "; ".join(f"{c.name}={c.value}" for c in http.cookies)
    return websocket.create_connection(
        bench.socket_url, origin=bench.stack.url, cookie=cookie, timeout=30
    )


def read_prompt(sock: websocket.WebSocket, timeout: float = 30.0) -> bytes:
    """Terminal output up to the first shell prompt (``NAME@ws-…$ ``)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while not (b"@ws-" in seen and seen.endswith(b"$ ")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no prompt in {seen[-300:]!r}")
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        data = sock.recv()
        seen += data if isinstance(data, bytes) else data.encode()

    return seen


def close_terminal(bench: Bench, sock: websocket.WebSocket, user_id: int) -> None:
    """Close the terminal and wait until its shell has ended, so the bot's
    teardown (``rwctl end``) never overlaps the next measurement."""
    from tests import services

    closed_before = TERMINALS_CLOSED.seen
    sock.close()
    uid = str(accounts.uid_for(user_id))

    def ended() -> bool:
        _, out = bench.container.exec_run(["ps", "-eo", "uid="])
        return uid not in out.decode().split()

    services.wait_for(ended, timeout=30, what="the shell to end")
    # The handler's last step, after the processes are gone, logs this.
    services.wait_for(
        lambda: TERMINALS_CLOSED.seen > closed_before,
        timeout=30,
        what="the bot's terminal handler to finish",
    )


# -- measurements -----------------------------------------------------------------


def _get(http: requests.Session, url: str, status: int) -> requests.Response:
    r = http.get(url, allow_redirects=False, timeout=60)
    if r.status_code != status:
        raise RuntimeError(f"{url} answered {r.status_code}, expected {status}")
    return r


def first_join(
    bench: Bench, username: str
) -> tuple[dict[str, float], dict[str, Any], requests.Session]:
    """A new reviewer's first join: phases in seconds, the user, their browser."""
    user = add_reviewer(bench, username)
    http, callback = start_sign_in(bench, user)

    start = time.perf_counter()
    signed_in = _get(http, callback, 302)
    after_sign_in = time.perf_counter()
    _get(http, requests.compat.urljoin(callback, signed_in.headers["Location"]), 200)
    after_page = time.perf_counter()
    sock = open_terminal(bench, http)
    after_handshake = time.perf_counter()
    read_prompt(sock)
    end = time.perf_counter()

    close_terminal(bench, sock, user["id"])
    phases = {
        "sign-in callback": after_sign_in - start,
        "join page": after_page - after_sign_in,
        "socket handshake": after_handshake - after_page,
        "shell to prompt": end - after_handshake,
        "total": end - start,
    }
    return phases, user, http


def second_join(
    bench: Bench, user: dict[str, Any], http: requests.Session
) -> dict[str, float]:
    start = time.perf_counter()
    _get(http, bench.join_url, 200)
    after_page = time.perf_counter()
    sock = open_terminal(bench, http)
    after_handshake = time.perf_counter()
    read_prompt(sock)
    end = time.perf_counter()

    close_terminal(bench, sock, user["id"])
    return {
        "join page": after_page - start,
        "socket handshake": after_handshake - after_page,
        "shell to prompt": end - after_handshake,
        "total": end - start,
    }


def _bare(container: Any, name: str, first: list[str]) -> float:
    """``first`` as root, then ``whoami`` as ``name``: seconds for both."""
    start = time.perf_counter()
    code, out = container.exec_run(first, user="root")
    if code != 0:
        raise RuntimeError(f"{first[0]} failed: {out.decode(errors='replace')}")
    code, out = container.exec_run(["whoami"], user=name)
    end = time.perf_counter()
    if code != 0 or out.decode().strip() != name:
        raise RuntimeError(f"whoami as {name} answered {out!r}")

    return end - start


def bare_first(container: Any, name: str) -> float:
    return _bare(container, name, ["useradd", "-m", name])


def bare_second(container: Any, name: str) -> float:
    return _bare(container, name, ["id", "-u", name])


def bare_one_exec(container: Any, name: str) -> float:
    start = time.perf_counter()
    container.exec_run(["whoami"], user=name)
    return time.perf_counter() - start


def measure(bench: Bench, repeat: int) -> Joins:
    joins = Joins()
    # One unmeasured round first: imports, connection pools, page cache.
    _, user, http = first_join(bench, "warmup")
    second_join(bench, user, http)
    bare_first(bench.container, "barewarmup")

    for rep in range(repeat):
        username, bare_name = f"reviewer{rep:03d}", f"bare{rep:03d}"

        def bot(username: str = username) -> None:
            phases, user, http = first_join(bench, username)
            joins.first.append(phases["total"])
            joins.first_phases.append(phases)
            phases = second_join(bench, user, http)
            joins.second.append(phases["total"])
            joins.second_phases.append(phases)

        def bare(name: str = bare_name) -> None:
            joins.bare_first.append(bare_first(bench.container, name))
            joins.bare_second.append(bare_second(bench.container, name))
            joins.bare_one_exec.append(bare_one_exec(bench.container, name))

        # Alternate which goes first, so that a noisy neighbour hurts both alike.
        steps: list[Callable[[], None]] = [bot, bare] if rep % 2 == 0 else [bare, bot]
        for step in steps:
            step()
        log.info(
            "join %d: first %.0f ms (bare %.0f), second %.0f ms (bare %.0f)",
            rep + 1,
            joins.first[-1] * 1000,
            joins.bare_first[-1] * 1000,
            joins.second[-1] * 1000,
            joins.bare_second[-1] * 1000,
        )

    return joins


# -- results --------------------------------------------------------------------


def _ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


def _phase_medians(phases: list[dict[str, float]]) -> dict[str, float]:
    names = phases[0].keys() if phases else []
    return {n: _report.median([p[n] * 1000 for p in phases]) for n in names}


def _figures(joins: Joins, options: argparse.Namespace) -> dict[str, Any]:
    first, bare_first_ms = _ms(joins.first), _ms(joins.bare_first)
    second, bare_second_ms = _ms(joins.second), _ms(joins.bare_second)
    first_ratio = _report.ratio(_report.median(first), _report.median(bare_first_ms))
    second_ratio = _report.ratio(_report.median(second), _report.median(bare_second_ms))
    n = len(first)
    rows = [
        _report.Row(
            f"first join, median of {n}",
            _report.median(first),
            _report.median(bare_first_ms),
            "ms",
            goal=f"<= {FIRST_GOAL:g}x bare",
            met=first_ratio <= FIRST_GOAL,
        ),
        _report.Row(
            "first join, p99",
            _report.percentile(first, 99),
            _report.percentile(bare_first_ms, 99),
            "ms",
        ),
        _report.Row(
            f"second join, median of {n}",
            _report.median(second),
            _report.median(bare_second_ms),
            "ms",
            goal=f"<= {SECOND_GOAL:g}x bare",
            met=second_ratio <= SECOND_GOAL,
        ),
        _report.Row(
            "second join, p99",
            _report.percentile(second, 99),
            _report.percentile(bare_second_ms, 99),
            "ms",
        ),
    ]
    machine = _report.machine()
    title = (
        "Join: callback (first) or join page (second) to shell prompt, vs bare "
        f"execs (useradd|id + whoami) on rootful Podman; {machine['cores']} cores, "
        f"{machine['date']}"
    )
    first_phases = _phase_medians(joins.first_phases)
    second_phases = _phase_medians(joins.second_phases)
    phases_text = "\n".join(
        [
            "Where the bot's time goes (median ms per phase):",
            "  first join:  "
            + ", ".join(f"{k} {v:.0f}" for k, v in first_phases.items()),
            "  second join: "
            + ", ".join(f"{k} {v:.0f}" for k, v in second_phases.items()),
            f"  for scale, one bare exec (whoami): median "
            f"{_report.median(_ms(joins.bare_one_exec)):.0f} ms",
        ]
    )

    return {
        "benchmark": "join",
        "machine": machine,
        "options": vars(options),
        "table": _report.table(title, "bare execs", rows),
        "phases_text": phases_text,
        "rows": [
            {
                "name": r.name,
                "bot": r.bot,
                "bare": r.baseline,
                "unit": r.unit,
                "ratio": r.ratio,
                "goal": r.goal,
                "met": r.met,
            }
            for r in rows
        ],
        "phase_medians_ms": {"first": first_phases, "second": second_phases},
        "runs_ms": {
            "first": first,
            "bare_first": bare_first_ms,
            "second": second,
            "bare_second": bare_second_ms,
            "bare_one_exec": _ms(joins.bare_one_exec),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
