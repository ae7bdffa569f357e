"""Resident memory of one bot process, against a bare Flask app on the same server.

``rwbot serve`` runs as a child process (``tests.harness.BotProcess``: gunicorn,
one gthread worker, the reconciler inside it) with the GitLab double and rootful
Podman (started here through ``tests.services.podman_service``). VmRSS is read
from ``/proc/<pid>/status`` of the gunicorn *worker*, which does all the work
(the master only watches it). Figures:

1. idle, once the reconciler's first resync is done;
2. after ``--deliveries`` webhook deliveries (all acknowledged), once the store
   has them and the reconciler has settled; then after as many again: the
   difference is growth per delivery, i.e. a leak;
3. with ``--terminals`` browser terminals open (WebSockets of signed-in
   reviewers, each with its own shell through ``rwctl shell``): the difference
   from before they opened, per terminal.

Baseline: a bare Flask app (:func:`bare_app`) on gunicorn with the same settings,
at idle, so the bot's idle figure has a ratio. Goals: idle <= 150 MB; no growth
after the deliveries once stored (at most ``GROWTH_GOAL_MB``, allocator noise);
<= 0.5 MB per open terminal.

Run: ``.venv/bin/python -m benchmarks.memory [--deliveries 10000]
[--terminals 100] [--json out.json]`` (as root, with Podman installed).
"""

from __future__ import annotations

# gunicorn imports this module to serve the baseline (bare_app): at the top,
# only what a bare Flask app needs; everything else is imported where used.
import argparse
import contextlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
IDLE_GOAL_MB = 150.0
#: "No growth": what the allocator may keep after the second batch anyway.
GROWTH_GOAL_MB = 2.0
TERMINAL_GOAL_MB = 0.5
#: Reviewers who open the terminals; each opens terminals / REVIEWERS of them.
REVIEWERS = 10
#: Merge requests the deliveries are spread over (each gets a workspace).
MRS = 5


def bare_app() -> Flask:
    """The baseline: Flask answering a webhook route and /healthz, nothing else."""
    app = Flask("bare")

    @app.post("/webhooks/gitlab")
    def receive() -> ResponseReturnValue:
        return jsonify(status="ok"), 200

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        return jsonify(status="ok"), 200

    return app


@dataclass
class Figures:
    """Resident memory in MB at each step, and the process's thread counts."""

    bare_idle: float = 0.0
    idle: float = 0.0
    after_first: float = 0.0
    after_second: float = 0.0
    before_terminals: float = 0.0
    with_terminals: float = 0.0
    threads: dict[str, int] = field(default_factory=dict)
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    delivery_seconds: list[float] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--deliveries",
        type=int,
        default=10_000,
        help="deliveries per batch; two batches (default 10000)",
    )
    parser.add_argument(
        "--terminals", type=int, default=100, help="open terminals (default 100)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write figures here")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks import _report, join

    problem = join.podman_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2

    threads = options.terminals + 28  # an open terminal holds a worker thread
    with tempfile.TemporaryDirectory(prefix="rwbot-bench-") as tmp:
        figures = Figures()
        figures.bare_idle = _bare_idle(Path(tmp), threads)
        measure(Path(tmp), options, threads, figures)
    result = _figures(figures, options, _report)
    print()
    print(result["text"])
    _report.write_json(options.json, result)

    return 0


# -- reading memory ---------------------------------------------------------------


def status_of(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def rss_mb(pid: int, reads: int = 5) -> float:
    """VmRSS in MB: the median of a few reads 0.1 s apart."""
    values = []
    for _ in range(reads):
        values.append(int(status_of(pid)["VmRSS"].split()[0]) / 1024)
        time.sleep(0.1)
    return statistics.median(values)


def breakdown_mb(pid: int) -> dict[str, float]:
    """Anonymous (heap, stacks) and file-backed (code, libraries) resident MB."""
    status = status_of(pid)
    return {
        name: int(status[name].split()[0]) / 1024
        for name in ("RssAnon", "RssFile", "RssShmem")
        if name in status
    }


def worker_pid(master: int) -> int:
    """The gunicorn worker: the master's only child."""
    path = Path(f"/proc/{master}/task/{master}/children")
    children = path.read_text().split()
    if len(children) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {children}")
    return int(children[0])


# -- the baseline -----------------------------------------------------------------


def _gunicorn_argv(port: int, threads: int, app: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--worker-class",
        "gthread",
        "--workers",
        "1",
        "--threads",
        str(threads),
        "--log-level",
        "warning",
        app,
    ]


def _bare_idle(tmp: Path, threads: int) -> float:
    import requests

    from tests import services

    port = services.free_port()
    with (tmp / "bare.log").open("wb") as out:
        proc = subprocess.Popen(
            _gunicorn_argv(port, threads, "benchmarks.memory:bare_app()"),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=out,
        )
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        services.wait_for(
            lambda: requests.get(url, timeout=1).ok, what="the bare app to answer"
        )
        return rss_mb(worker_pid(proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# -- the bot ----------------------------------------------------------------------


@contextlib.contextmanager
def bot_installation(tmp: Path, threads: int) -> Iterator[Any]:
    """Podman, the GitLab double with MRS open merge requests, ``rwbot serve``."""
    from tests import harness, services
    from tests.gitlab_double import DEVELOPER, GitLabDouble

    with services.podman_service() as docker_host, GitLabDouble() as gitlab:
        port = services.free_port()
        public_url = f"http://127.0.0.1:{port}"
        client_id, client_secret = gitlab.register_oauth_app(
            f"{public_url}/auth/callback"
        )
        settings = harness.bot_settings(
            gitlab,
            public_url,
            f"sqlite:///{tmp}/bot.db",
            oauth_client_id=client_id,
            oauth_client_secret=client_secret,
        ).with_overrides(workspace_memory="4g")
        bot = harness.BotProcess(
            settings,
            docker_host,
            tmp / "bot.log",
            # Room for every terminal's shell in the one workspace.
            extra_env={"RWBOT_WORKSPACE_PIDS": "4096"},
            threads=threads,
        )
        project = gitlab.add_project("team/app")
        author = gitlab.add_user("author")
        gitlab.set_member(project, author, DEVELOPER)
        mrs = [
            gitlab.open_mr(project, f"f{n}", {f"f{n}.txt": "x\n"}, author=author)
            for n in range(MRS)
        ]
        bot.start()
        try:
            yield bot, gitlab, project, mrs
        finally:
            bot.stop()
            import docker

            client = docker.DockerClient(base_url=docker_host)
            ours = {"label": [f"rwbot.instance={settings.instance}"]}
            for container in client.containers.list(all=True, filters=ours):
                container.remove(force=True, v=True)
            for volume in client.volumes.list(filters=ours):
                volume.remove(force=True)


def measure(
    tmp: Path, options: argparse.Namespace, threads: int, figures: Figures
) -> None:
    from bot.store import Store

    with bot_installation(tmp, threads) as (bot, gitlab, project, mrs):
        assert bot.proc is not None
        pid = worker_pid(bot.proc.pid)
        store = Store(bot.settings.database_url)
        _wait(lambda: "resync done" in bot.log_tail(10**7), "the first resync")
        figures.idle = rss_mb(pid)
        figures.breakdown["idle"] = breakdown_mb(pid)
        figures.threads["idle"] = int(status_of(pid)["Threads"])
        log.info("idle: %.1f MB", figures.idle)

        bodies = [_hook_body(gitlab, mr) for mr in mrs]
        for batch in ("first", "second"):
            seconds = _deliver(bot, bodies, options.deliveries, batch)
            figures.delivery_seconds.append(seconds)
            _wait(lambda: _settled(store, len(mrs)), "the reconciler to settle")
            value = rss_mb(pid)
            setattr(figures, f"after_{batch}", value)
            figures.breakdown[f"after {batch}"] = breakdown_mb(pid)
            log.info(
                "%s %d deliveries in %.1f s; stored and settled: %.1f MB",
                batch,
                options.deliveries,
                seconds,
                value,
            )

        socks = _open_terminals(bot, gitlab, project, mrs[0], options.terminals, pid)
        figures.before_terminals = socks.before
        figures.with_terminals = rss_mb(pid)
        figures.breakdown["terminals"] = breakdown_mb(pid)
        figures.threads["terminals"] = int(status_of(pid)["Threads"])
        log.info("%d terminals open: %.1f MB", len(socks.open), figures.with_terminals)
        for sock in socks.open:
            with contextlib.suppress(Exception):
                sock.close()
        store.dispose()


def _wait(condition: Any, what: str) -> None:
    from tests import services

    services.wait_for(condition, timeout=300, what=what)


def _hook_body(gitlab: Any, mr: dict[str, Any]) -> bytes:
    import json

    return json.dumps(gitlab.mr_hook(mr, "open")).encode()


def _deliver(bot: Any, bodies: list[bytes], count: int, batch: str) -> float:
    """``count`` deliveries, each with its own key, from 8 threads; all must be
    acknowledged. Returns the seconds they took."""
    import requests

    from tests import harness

    url = f"{bot.settings.public_url}/webhooks/gitlab"
    local = threading.local()

    def send(i: int) -> None:
        if not hasattr(local, "http"):
            local.http = requests.Session()
        r = local.http.post(
            url,
            data=bodies[i % len(bodies)],
            headers={
                "Content-Type": "application/json",
                "X-Gitlab-Event": "Merge Request Hook",
                "X-Gitlab-Token": harness.WEBHOOK_SECRET,
                "Idempotency-Key": f"{batch}-{i}",
            },
            timeout=30,
        )
        if not r.ok:
            raise RuntimeError(f"delivery {batch}-{i} answered {r.status_code}")

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(send, range(count)))
    return time.perf_counter() - started


def _settled(store: Any, workspaces: int) -> bool:
    """Every delivery stored (they are, once acknowledged), every workspace
    ready and nothing due."""
    import sqlalchemy as sa

    from bot.store import Workspace, utcnow

    with store.session() as s:
        ready = s.scalar(
            sa.select(sa.func.count())
            .select_from(Workspace)
            .where(Workspace.phase == "ready", Workspace.note_id.is_not(None))
        )
        due = s.scalar(
            sa.select(sa.func.count())
            .select_from(Workspace)
            .where(Workspace.due_at <= utcnow())
        )
    return bool(ready == workspaces and due == 0)


@dataclass
class Terminals:
    before: float
    open: list[Any]


def _open_terminals(
    bot: Any,
    gitlab: Any,
    project: dict[str, Any],
    mr: dict[str, Any],
    count: int,
    pid: int,
) -> Terminals:
    """Sign in REVIEWERS reviewers, measure, then open ``count`` terminals
    among them, each to its shell prompt."""
    from types import SimpleNamespace

    import requests

    from benchmarks import join

    bench = join.Bench(
        stack=SimpleNamespace(url=bot.settings.public_url, gitlab=gitlab),
        project=project,
        mr=mr,
        container=None,
    )
    browsers = []
    for n in range(REVIEWERS):
        user = join.add_reviewer(bench, f"reviewer{n:02d}")
        http, callback = join.start_sign_in(bench, user)
        signed_in = join._get(http, callback, 302)
        location = signed_in.headers["Location"]
        join._get(http, requests.compat.urljoin(callback, location), 200)
        browsers.append(http)
    before = rss_mb(pid)

    def open_one(i: int) -> Any:
        sock = join.open_terminal(bench, browsers[i % len(browsers)])
        join.read_prompt(sock, timeout=120)
        return sock

    with ThreadPoolExecutor(max_workers=4) as pool:
        socks = list(pool.map(open_one, range(count)))
    return Terminals(before, socks)


# -- results ----------------------------------------------------------------------


def _figures(
    figures: Figures, options: argparse.Namespace, report: Any
) -> dict[str, Any]:
    growth = figures.after_second - figures.after_first
    terminals = options.terminals
    per_terminal = (figures.with_terminals - figures.before_terminals) / terminals
    n = options.deliveries
    rows = [
        report.Row(
            "idle after start",
            figures.idle,
            figures.bare_idle,
            "MB",
            goal=f"<= {IDLE_GOAL_MB:g} MB",
            met=figures.idle <= IDLE_GOAL_MB,
        ),
        report.Row(
            f"after {n:,} deliveries", figures.after_first, figures.bare_idle, "MB"
        ),
        report.Row(
            f"after {2 * n:,} deliveries", figures.after_second, figures.bare_idle, "MB"
        ),
        report.Row(
            "reviewers signed in", figures.before_terminals, figures.bare_idle, "MB"
        ),
        report.Row(
            f"{terminals} terminals open",
            figures.with_terminals,
            figures.bare_idle,
            "MB",
        ),
    ]
    machine = report.machine()
    title = (
        "Memory: VmRSS of the gunicorn worker (1 gthread worker, "
        f"{terminals + 28} threads), vs a bare Flask app at idle; "
        f"{machine['cores']} cores, {machine['date']}"
    )
    growth_met = growth <= GROWTH_GOAL_MB
    terminal_met = per_terminal <= TERMINAL_GOAL_MB
    lines = [
        report.table(title, "bare idle", rows),
        f"growth over the second {n:,} deliveries: {growth:+.2f} MB "
        f"({growth * 1024 * 1024 / n:+.0f} bytes per delivery); goal <= "
        f"{GROWTH_GOAL_MB:g} MB ({'met' if growth_met else 'MISSED'})",
        f"per open terminal: {per_terminal:.3f} MB; goal <= {TERMINAL_GOAL_MB:g} MB "
        f"({'met' if terminal_met else 'MISSED'})",
        "threads: "
        + ", ".join(f"{k} {v}" for k, v in figures.threads.items())
        + "; resident anon/file MB: "
        + "; ".join(
            f"{k} {v.get('RssAnon', 0):.1f}/{v.get('RssFile', 0):.1f}"
            for k, v in figures.breakdown.items()
        ),
        "delivery batches took "
        + ", ".join(f"{s:.1f} s" for s in figures.delivery_seconds),
    ]
    return {
        "benchmark": "memory",
        "machine": machine,
        "options": vars(options),
        "text": "\n".join(lines),
        "rss_mb": {
            "bare_idle": figures.bare_idle,
            "idle": figures.idle,
            "after_first": figures.after_first,
            "after_second": figures.after_second,
            "before_terminals": figures.before_terminals,
            "with_terminals": figures.with_terminals,
        },
        "growth_mb": growth,
        "per_terminal_mb": per_terminal,
        "goals_met": {
            "idle": figures.idle <= IDLE_GOAL_MB,
            "growth": growth_met,
            "per_terminal": terminal_met,
        },
        "threads": figures.threads,
        "breakdown_mb": figures.breakdown,
        "delivery_seconds": figures.delivery_seconds,
    }


if __name__ == "__main__":
    sys.exit(main())
