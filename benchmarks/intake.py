"""Webhook intake: the bot's ``POST /webhooks/gitlab`` against a bare Flask app.

Both apps run under gunicorn with the same settings (``--workers`` gthread
workers of 8 threads, 1 by default) on loopback; the bot stores each delivery
in a fresh, migrated SQLite file, or with ``--postgres`` in a new database on a
PostgreSQL server started for the run (as ``benchmarks.open --postgres`` does).
Each worker builds its own app, as in production, and no run starts before
every worker of both apps has. Two figures, each for the bot and the bare app:

1. Throughput: wrk keeps ``--concurrency`` requests in flight for
   ``--duration`` seconds; deliveries answered 2xx per second.
2. Acknowledgement latency at a fixed ``--rate`` (open loop, see
   ``benchmarks/_paced.py``): p50 and p99 from each request's scheduled time.

Every request is the recorded ``tests/samples/mr_open.json`` with its own
``Idempotency-Key``, so every delivery is stored. Afterwards the delivery rows
are counted against the 2xx answers. Goals: bot throughput at least 0.5x the
bare app's; p99 acknowledgement at most 25 ms at 500 deliveries/s.

Run: ``.venv/bin/python -m benchmarks.intake [--duration 7] [--workers 1]
[--postgres] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask

from benchmarks import _apps, _paced, _report
from benchmarks._apps import WEBHOOK_PATH
from bot.store import Delivery, Store

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = ROOT / "tests" / "samples" / "mr_open.json"
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"
HOST = "127.0.0.1"
EVENT = "Merge Request Hook"

THROUGHPUT_GOAL = 0.5  # bot / bare
P99_GOAL_MS = 25.0
#: Tells each gunicorn worker where to say that it has built its app.
READY_DIR_ENV = "BENCH_READY_DIR"


@dataclass(frozen=True)
class Server:
    name: str
    port: int
    workers: int
    #: Where each worker leaves a file once it has built its app.
    ready_dir: Path


@dataclass(frozen=True)
class WrkRun:
    ok: int
    other: int
    socket_errors: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=7.0,
        help="seconds per measured run (default 7)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="requests in flight for the throughput runs",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="deliveries per second for the latency runs",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per app and figure (default 3)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gunicorn worker processes, for both apps (default 1)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="store on a PostgreSQL server started for the run, not SQLite",
    )
    parser.add_argument(
        "--profile-requests",
        type=int,
        default=2000,
        help="deliveries to profile in-process if a goal is missed (0: never)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write figures here")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        return 2

    figures = run(options)
    print()
    print(figures["table"])
    print(figures["verification"]["summary"])
    if figures.get("profile"):
        print(
            "\nWhere the bot's time goes (in-process, one thread, cProfile; "
            "ms/unit = per delivery):"
        )
        print(figures["profile"])
    _report.write_json(options.json, figures)

    return 0


def run(options: argparse.Namespace) -> dict[str, Any]:
    webhook_secret = secrets.token_hex(16)
    with (
        tempfile.TemporaryDirectory(prefix="rwbot-bench-") as tmp_name,
        contextlib.ExitStack() as services_up,
    ):
        tmp = Path(tmp_name)
        new_database = _databases(options.postgres, tmp, services_up)
        database_url = new_database("bot")
        store = Store(database_url)
        store.migrate()
        env = _bot_env(database_url, webhook_secret)
        with (
            _serve("bot", "bot_app", env, tmp, options.workers) as bot,
            _serve("bare", "bare_app", {}, tmp, options.workers) as bare,
        ):
            servers = (bot, bare)
            for server in servers:
                _wait_ready(server, webhook_secret)
            rows_before = _settled_count(store)
            wrk_runs = _throughput(servers, options, webhook_secret, store)
            rows_after_wrk = _settled_count(store)
            paced_runs = _latency(servers, options, webhook_secret)
            rows_after_paced = _settled_count(store)
        verification = _verify(
            wrk_runs["bot"],
            paced_runs["bot"],
            rows_after_wrk - rows_before,
            rows_after_paced - rows_after_wrk,
            options.concurrency,
        )
        figures = _figures(options, wrk_runs, paced_runs, verification)
        missed = any(row["met"] is False for row in figures["rows"])
        if missed and options.profile_requests > 0:
            figures["profile"] = _profile(
                new_database("profile"), webhook_secret, options.profile_requests
            )
        store.dispose()

    return figures


def _databases(
    postgres: bool, tmp: Path, services_up: contextlib.ExitStack
) -> Callable[[str], str]:
    """How to make a new, empty database for this run: give it a name, get its
    URL. SQLite files in ``tmp``, or databases on a PostgreSQL server that
    ``services_up`` stops at the end."""
    if not postgres:
        return lambda name: f"sqlite:///{tmp}/{name}.db"

    from tests import services

    server = services_up.enter_context(services.postgres_server())
    return lambda _name: services.create_database(server)


# -- servers ------------------------------------------------------------------


def _bot_env(database_url: str, webhook_secret: str) -> dict[str, str]:
    return {
        # Intake never calls GitLab; nothing listens on this port.
        "RWBOT_GITLAB_URL": f"http://{HOST}:{_free_port()}",
        "RWBOT_GITLAB_TOKEN": secrets.token_hex(16),
        "RWBOT_WEBHOOK_SECRET": webhook_secret,
        "RWBOT_PUBLIC_URL": "http://127.0.0.1:8080",
        "RWBOT_DATABASE_URL": database_url,
        "RWBOT_SESSION_SECRET": secrets.token_hex(32),
    }


@contextlib.contextmanager
def _serve(
    name: str, factory: str, env: dict[str, str], tmp: Path, workers: int
) -> Iterator[Server]:
    port = _free_port()
    ready_dir = tmp / f"{name}-ready"
    ready_dir.mkdir()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{HOST}:{port}",
        "--worker-class",
        "gthread",
        "--threads",
        "8",
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        f"benchmarks.intake:served_app({factory!r})",
    ]
    child_env = {
        **os.environ,
        **env,
        "PYTHONPATH": str(ROOT),
        READY_DIR_ENV: str(ready_dir),
    }
    log.info("starting %s on port %d with %d workers", name, port, workers)
    with open(tmp / f"{name}.log", "wb") as log_file:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=child_env, stdout=log_file, stderr=log_file
        )
        try:
            yield Server(name, port, workers, ready_dir)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def served_app(factory: str) -> Flask:
    """What each gunicorn worker serves: the app ``benchmarks._apps.<factory>()``
    builds; then a file named after the worker's pid in ``$BENCH_READY_DIR``.

    A worker still building its app accepts no connection, and wrk keeps the
    connections it opens first for the whole run: a run started before every
    worker is up would measure fewer of them.
    """
    app: Flask = getattr(_apps, factory)()
    (Path(os.environ[READY_DIR_ENV]) / str(os.getpid())).touch()

    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _headers(webhook_secret: str, key: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Gitlab-Event": EVENT,
        "X-Gitlab-Token": webhook_secret,
        "Idempotency-Key": key,
    }


def _wait_ready(server: Server, webhook_secret: str, timeout: float = 30.0) -> None:
    """Wait until every worker has built its app and the app answers a real
    delivery (which is stored)."""
    body = PAYLOAD.read_bytes()
    deadline = time.monotonic() + timeout
    while len(list(server.ready_dir.iterdir())) < server.workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.name}: not every worker started")
        time.sleep(0.2)

    while True:
        conn = http.client.HTTPConnection(HOST, server.port, timeout=5)
        try:
            key = f"ready-{server.name}-{uuid.uuid4().hex}"
            conn.request("POST", WEBHOOK_PATH, body, _headers(webhook_secret, key))
            status = conn.getresponse().status
            if status == 200:
                return
            raise RuntimeError(f"{server.name} answered {status} to a delivery")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            conn.close()


def _count(store: Store) -> int:
    with store.session() as session:
        return int(session.scalar(sa.select(sa.func.count(Delivery.id))) or 0)


def _settled_count(store: Store, quiet: float = 1.0, timeout: float = 60.0) -> int:
    """The number of delivery rows once no new one arrived for ``quiet`` seconds.

    wrk exits with requests still in flight; the bot finishes storing them
    afterwards, and they must neither be counted for the next run nor slow it.
    """
    deadline = time.monotonic() + timeout
    count = _count(store)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        latest = _count(store)
        if latest == count:
            break
        count = latest

    return count


# -- measurements ---------------------------------------------------------------


def _throughput(
    servers: tuple[Server, ...],
    options: argparse.Namespace,
    webhook_secret: str,
    store: Store,
) -> dict[str, list[WrkRun]]:
    runs: dict[str, list[WrkRun]] = {s.name: [] for s in servers}
    for rep in range(options.repeat):
        # Alternate the apps so that a noisy neighbour hurts both alike.
        for server in servers if rep % 2 == 0 else servers[::-1]:
            result = _wrk(server, options, webhook_secret)
            runs[server.name].append(result)
            _settled_count(store)
            log.info(
                "throughput %s run %d: %.0f deliveries/s",
                server.name,
                rep + 1,
                result.per_second,
            )

    return runs


def _wrk(server: Server, options: argparse.Namespace, webhook_secret: str) -> WrkRun:
    run_id = f"wrk-{server.name}-{uuid.uuid4().hex[:12]}"
    argv = [
        "wrk",
        "-t2",
        f"-c{options.concurrency}",
        f"-d{options.duration:g}s",
        "-s",
        str(WRK_SCRIPT),
        f"http://{HOST}:{server.port}{WEBHOOK_PATH}",
        "--",
        run_id,
        str(PAYLOAD),
    ]
    env = {**os.environ, "BENCH_WEBHOOK_TOKEN": webhook_secret}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])

    return WrkRun(
        ok=summary["ok"],
        other=summary["other"],
        socket_errors=summary["socket_errors"],
        seconds=summary["duration_us"] / 1e6,
    )


def _latency(
    servers: tuple[Server, ...], options: argparse.Namespace, webhook_secret: str
) -> dict[str, list[_paced.PacedResult]]:
    body = PAYLOAD.read_bytes()
    runs: dict[str, list[_paced.PacedResult]] = {s.name: [] for s in servers}
    for rep in range(options.repeat):
        for server in servers if rep % 2 == 0 else servers[::-1]:
            run_id = f"paced-{server.name}-{uuid.uuid4().hex[:12]}"

            def request(i: int, run_id: str = run_id) -> bytes:
                headers = _headers(webhook_secret, f"{run_id}-{i}")
                return _paced.post(HOST, WEBHOOK_PATH, headers, body)

            result = _paced.run(
                HOST,
                server.port,
                request,
                rate=options.rate,
                duration=options.duration,
            )
            runs[server.name].append(result)
            log.info(
                "latency %s run %d: p99 %.1f ms at %g/s",
                server.name,
                rep + 1,
                _report.percentile(result.latencies, 99) * 1000,
                options.rate,
            )

    return runs


# -- results ------------------------------------------------------------------


def _verify(
    wrk_runs: list[WrkRun],
    paced_runs: list[_paced.PacedResult],
    wrk_rows: int,
    paced_rows: int,
    concurrency: int,
) -> dict[str, Any]:
    """Compare stored delivery rows with 2xx answers.

    The paced runs wait for every answer, so rows must equal 2xx exactly. wrk
    stops with up to ``concurrency`` requests in flight per run: the bot may
    have stored those without wrk counting the answer.
    """
    wrk_ok = sum(r.ok for r in wrk_runs)
    paced_ok = sum(r.ok for r in paced_runs)
    refused = sum(r.other for r in wrk_runs) + sum(
        n for r in paced_runs for s, n in r.statuses.items() if not 200 <= s < 300
    )
    failures = sum(r.socket_errors for r in wrk_runs) + sum(
        r.failures for r in paced_runs
    )
    cut_off = wrk_rows - wrk_ok
    exact = paced_rows == paced_ok
    bounded = 0 <= cut_off <= concurrency * len(wrk_runs)
    summary = (
        f"Nothing lost: {'yes' if exact and bounded else 'NO'}. "
        f"Paced runs: {paced_rows} delivery rows for {paced_ok} 2xx answers"
        f"{'' if exact else ' (MISMATCH)'}; wrk runs: {wrk_rows} rows for "
        f"{wrk_ok} 2xx answers ({cut_off} answered after wrk stopped, at most "
        f"{concurrency} in flight per run); non-2xx answers: {refused}; "
        f"socket errors: {failures}."
    )

    return {
        "nothing_lost": exact and bounded,
        "paced_rows": paced_rows,
        "paced_2xx": paced_ok,
        "wrk_rows": wrk_rows,
        "wrk_2xx": wrk_ok,
        "non_2xx": refused,
        "socket_errors": failures,
        "summary": summary,
    }


def _figures(
    options: argparse.Namespace,
    wrk_runs: dict[str, list[WrkRun]],
    paced_runs: dict[str, list[_paced.PacedResult]],
    verification: dict[str, Any],
) -> dict[str, Any]:
    throughput = {
        name: _report.median([r.per_second for r in runs])
        for name, runs in wrk_runs.items()
    }
    # Percentiles over every measured request of all repetitions together.
    latencies = {
        name: [lat * 1000 for r in runs for lat in r.latencies]
        for name, runs in paced_runs.items()
    }
    p50 = {name: _report.percentile(v, 50) for name, v in latencies.items()}
    p99 = {name: _report.percentile(v, 99) for name, v in latencies.items()}
    worst_p99 = {
        name: max(_report.percentile(r.latencies, 99) * 1000 for r in runs)
        for name, runs in paced_runs.items()
    }
    throughput_ratio = _report.ratio(throughput["bot"], throughput["bare"])
    rows = [
        _report.Row(
            f"throughput (median of {options.repeat}, c={options.concurrency})",
            throughput["bot"],
            throughput["bare"],
            "deliveries/s",
            goal=f">= {THROUGHPUT_GOAL}x bare",
            met=throughput_ratio >= THROUGHPUT_GOAL,
        ),
        _report.Row(f"ack p50 at {options.rate:g}/s", p50["bot"], p50["bare"], "ms"),
        _report.Row(
            f"ack p99 at {options.rate:g}/s",
            p99["bot"],
            p99["bare"],
            "ms",
            goal=f"<= {P99_GOAL_MS:g} ms",
            met=p99["bot"] <= P99_GOAL_MS,
        ),
        _report.Row(
            f"ack p99, worst of {options.repeat} runs",
            worst_p99["bot"],
            worst_p99["bare"],
            "ms",
        ),
    ]
    machine = _report.machine()
    database = "PostgreSQL" if options.postgres else "SQLite"
    title = (
        f"Webhook intake: gunicorn gthread {options.workers}x8 for both, "
        f"{database}, {options.duration:g} s per run, {machine['cores']} cores, "
        f"{machine['date']}"
    )

    return {
        "benchmark": "intake",
        "database": database.lower(),
        "workers": options.workers,
        "machine": machine,
        "options": vars(options),
        "table": _report.table(title, "bare", rows),
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
        "runs": {
            "throughput_per_second": {
                name: [r.per_second for r in runs] for name, runs in wrk_runs.items()
            },
            "latency_p99_ms": {
                name: [_report.percentile(r.latencies, 99) * 1000 for r in runs]
                for name, runs in paced_runs.items()
            },
            "latency_send_lag_s": {
                name: [r.send_lag for r in runs] for name, runs in paced_runs.items()
            },
        },
        "verification": verification,
    }


def _profile(database_url: str, webhook_secret: str, count: int) -> str:
    """Deliveries through the bot's handler in this process, under cProfile."""
    from bot import app as bot_app_module
    from bot import logs
    from bot import settings as settings_mod

    store = Store(database_url)
    store.migrate()
    env = {**os.environ, **_bot_env(database_url, webhook_secret)}
    settings = settings_mod.from_env(env)
    app = bot_app_module.create_app(settings, store=store)
    client = app.test_client()
    body = PAYLOAD.read_bytes()

    def deliver() -> None:
        for i in range(count):
            headers = _headers(webhook_secret, f"profile-{i}")
            client.post(WEBHOOK_PATH, data=body, headers=headers)

    # The bot logs every delivery at INFO, as under gunicorn: keep the cost of
    # formatting and writing the lines, not the lines. Then give the root
    # logger back to the benchmark (other benchmarks may run after this one).
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    with open(os.devnull, "w") as sink:
        logs.configure(
            settings.log_format,
            settings.log_level,
            bot_app_module.secrets_of(settings),
        )
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(sink)
        try:
            text, _ = _report.profile(deliver, per=count)
        finally:
            root.handlers[:], level = saved
            root.setLevel(level)
    store.dispose()

    return text


if __name__ == "__main__":
    sys.exit(main())
