"""MR opened → join-link comment posted, against the runtime's own start and clone.

The bot runs in-process (``tests.harness.Stack``: GitLab double, real Podman)
with its reconciler in a background thread, as ``rwbot serve`` runs it, with
the production idle pause (0.5 s). For each repetition a new merge request is
opened and its webhook delivered; the figure is the time until the bot's
comment says "ready" with the join link. Each delivery comes 0.5-1 s after the
previous MR was ready (seeded), i.e. at a random point of the reconciler's idle
pause. Two ways, alternating:

- woken: the receiver rings the reconciler once it has committed the delivery,
  as in ``rwbot serve`` (the headline figure);
- not woken: the same reconciler, but the delivery goes through an app whose
  receiver rings nothing, as in a split install (web apart from
  ``rwbot worker``) on SQLite, where a new MR waits for the reconciler's next
  look;
- notified (with ``--postgres``, which puts the store on a PostgreSQL server
  started for the run): the app rings nothing, and a ``bot.wakeup.Listener``
  on a connection of its own wakes the reconciler when the intake's NOTIFY
  arrives, as it wakes ``rwbot worker`` on a split install. Between its opens
  the listener is closed, so the other two ways are what they were.

The baseline is what any review workspace must wait for, done bare on the same
runtime: fetch the MR ref with git from the same GitLab double, create and start
a container from the same image, copy the checkout in with ``put_archive``.
The difference of the medians is what the bot adds (webhook intake, store,
claim, comment, the in-workspace tool's ``init``); the goal is at most 300 ms.

Run: ``.venv/bin/python -m benchmarks.open [--repeat 10] [--postgres]
[--json out.json]``
(as root, with Podman installed).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import _report
from benchmarks.join import _quiet_bot, podman_problem
from bot import wakeup
from bot.app import create_app

GOAL_MS = 300.0
#: The reconciler's idle pause in production (``Reconciler.run_forever``).
IDLE_WAIT = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument(
        "--postgres", action="store_true", help="store on PostgreSQL; add notified"
    )
    args = parser.parse_args(argv)
    problem = podman_problem()
    if problem:
        print(f"open: {problem}", file=sys.stderr)
        return 2

    from tests import harness, services
    from tests.gitlab_double import DEVELOPER

    woken: list[float] = []
    unwoken: list[float] = []
    notified: list[float] = []
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="rwbot-bench-open-") as tmp_name:
        tmp = Path(tmp_name)
        with contextlib.ExitStack() as services_up:
            services_up.enter_context(_quiet_bot(tmp / "bot.log"))
            docker_host = services_up.enter_context(services.podman_service())
            extra = {}
            if args.postgres:
                server = services_up.enter_context(services.postgres_server())
                extra["database_url"] = services.create_database(server)
            stack = harness.Stack(docker_host, tmp, **extra)
            stop, wake = threading.Event(), threading.Event()

            def app(bell: threading.Event | None) -> Any:
                return create_app(
                    stack.settings,
                    store=stack.store,
                    gitlab=stack.client,
                    runtime=stack.runtime,
                    wake=bell,
                )

            # As rwbot serve builds it: the receiver rings the reconciler.
            ringing, silent = app(wake), app(None)
            worker = threading.Thread(
                target=stack.reconciler.run_forever,
                args=(stop,),
                kwargs={"idle_wait": IDLE_WAIT, "wake": wake},
                daemon=True,
            )
            try:
                project = stack.gitlab.add_project("team/app")
                author = stack.gitlab.add_user("author")
                stack.gitlab.set_member(project, author, DEVELOPER)
                worker.start()
                arrivals = random.Random(0)  # seeded: the same arrivals every run
                for i in range(args.repeat + 1):  # the first is a warm-up
                    stack.app = ringing
                    _arrive(arrivals)
                    woken_ms = _open(stack, project, author, f"w{i}")
                    stack.app = silent
                    _arrive(arrivals)
                    unwoken_ms = _open(stack, project, author, f"s{i}")
                    notified_ms = math.nan
                    if args.postgres:
                        listener = wakeup.Listener(stack.store, wake).start()
                        services.wait_for(lambda heard=listener: heard.connections)
                        _arrive(arrivals)
                        notified_ms = _open(stack, project, author, f"n{i}")
                        listener.close()
                    bare_ms = _bare(stack, project, tmp / f"bare-{i}")
                    if i:
                        woken.append(woken_ms)
                        unwoken.append(unwoken_ms)
                        if args.postgres:
                            notified.append(notified_ms)
                        bare.append(bare_ms)
                    print(
                        f"run {i}: woken {woken_ms:.0f} ms, not woken "
                        f"{unwoken_ms:.0f} ms, notified {notified_ms:.0f} ms, "
                        f"bare {bare_ms:.0f} ms",
                        flush=True,
                    )
            finally:
                stop.set()
                wake.set()
                worker.join(timeout=10)
                stack.close()

    _print_and_write(args, woken, unwoken, notified, bare)
    return 0


def _print_and_write(
    args: argparse.Namespace,
    woken: list[float],
    unwoken: list[float],
    notified: list[float],
    bare: list[float],
) -> None:
    added = _report.median(woken) - _report.median(bare)
    added_unwoken = _report.median(unwoken) - _report.median(bare)
    ways = [("woken", woken), ("not woken", unwoken)]
    if notified:
        ways.append(("notified", notified))
    rows = [
        _report.Row(f"{name}, {stat}", figure(times), figure(bare), "ms")
        for name, times in ways
        for stat, figure in (
            ("median", _report.median),
            ("p99", lambda xs: _report.percentile(xs, 99)),
        )
    ]
    print()
    print(
        _report.table(
            f"MR opened -> join-link comment vs bare fetch + container start + copy; "
            f"{args.repeat} runs each, alternating; idle pause {IDLE_WAIT} s; "
            f"store {'PostgreSQL' if args.postgres else 'SQLite'}; "
            f"{_report.machine()['cores']} cores",
            "bare",
            rows,
        )
    )
    met = "met" if added <= GOAL_MS else "MISSED"
    print(
        f"woken, the bot adds {added:.0f} ms at the median "
        f"(goal <= {GOAL_MS:.0f} ms: {met}); not woken (split install) "
        f"{added_unwoken:.0f} ms"
    )
    if notified:
        added_notified = _report.median(notified) - _report.median(bare)
        print(f"notified (split install on PostgreSQL) {added_notified:.0f} ms")
    _report.write_json(
        args.json,
        {
            "woken_ms": woken,
            "not_woken_ms": unwoken,
            "notified_ms": notified,
            "database": "postgresql" if args.postgres else "sqlite",
            "bare_ms": bare,
            "added_ms": added,
            "added_not_woken_ms": added_unwoken,
            "idle_wait_s": IDLE_WAIT,
            "machine": _report.machine(),
        },
    )


def _arrive(arrivals: random.Random) -> None:
    """Let the reconciler finish the previous MR's pass, then deliver at a
    random point of its idle pause, as webhooks arrive: otherwise each delivery
    lands while the previous pass is ending, whose next claim finds it at once
    and hides the pause. Not timed, and not a wait for a condition: it chooses
    when the next webhook comes."""
    time.sleep(IDLE_WAIT + arrivals.uniform(0, IDLE_WAIT))


def _open(
    stack: Any, project: dict[str, Any], author: dict[str, Any], name: str
) -> float:
    mr = stack.gitlab.open_mr(
        project, f"feature-{name}", {"a.txt": f"{name}\n"}, author=author
    )
    payload = stack.gitlab.mr_hook(mr, "open")
    started = time.perf_counter()
    stack.deliver(payload)

    def ready() -> bool:
        return any(
            "ready" in n["body"] and "/w/" in n["body"] for n in stack.bot_notes(mr)
        )

    _wait(ready)
    return (time.perf_counter() - started) * 1000


def _bare(stack: Any, project: dict[str, Any], where: Path) -> float:
    """Fetch the MR ref, create and start a container, copy the checkout in."""
    from bot import git
    from bot.runtime.docker import _tar_dir
    from tests import services

    mr = stack.gitlab.open_mr(project, f"bare-{where.name}", {"b.txt": "b\n"})
    url = f"{stack.gitlab.url}/{project['path_with_namespace']}.git"
    started = time.perf_counter()
    git.fetch_checkout(
        url, f"refs/merge-requests/{mr['iid']}/head", "", stack.gitlab.token, where
    )
    container = stack.docker.containers.create(
        services.WORKSPACE_IMAGE,
        ["sleep", "infinity"],
        init=True,
        network_mode="none",
        detach=True,
    )
    container.put_archive("/srv", _tar_dir(where, "app"))
    container.start()
    elapsed = (time.perf_counter() - started) * 1000
    container.remove(force=True)
    return elapsed


def _wait(condition: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the comment never said ready")
        time.sleep(0.005)


if __name__ == "__main__":
    sys.exit(main())
