"""MR opened → join-link comment posted, against the runtime's own start and clone.

The bot runs in-process (``tests.harness.Stack``: GitLab double, real Podman)
with its reconciler in a background thread, as ``rwbot serve`` runs it: the
production idle pause (0.5 s), ended early by the webhook receiver once it has
committed a delivery. ``--no-wake`` leaves the receiver unconnected, as in a
split install (web and ``rwbot worker`` apart), where the reconciler notices a
new MR only at its next look. For each repetition a new merge request is
opened and its webhook delivered; the figure is the time until the bot's
comment says "ready" with the join link.

The baseline is what any review workspace must wait for, done bare on the same
runtime: fetch the MR ref with git from the same GitLab double, create and start
a container from the same image, copy the checkout in with ``put_archive``.
The difference of the medians is what the bot adds (webhook intake, store,
claim, comment, the in-workspace tool's ``init``); the goal is at most 300 ms.

Run: ``.venv/bin/python -m benchmarks.open [--repeat 10] [--no-wake]
[--json out.json]``
(as root, with Podman installed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import _report
from benchmarks.join import _quiet_bot, podman_problem
from bot.app import create_app

GOAL_MS = 300.0
#: The reconciler's idle pause in production (``Reconciler.run_forever``).
IDLE_WAIT = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument(
        "--no-wake",
        dest="wake",
        action="store_false",
        help="no wake-up from the receiver (a split install)",
    )
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args(argv)
    problem = podman_problem()
    if problem:
        print(f"open: {problem}", file=sys.stderr)
        return 2

    from tests import harness, services
    from tests.gitlab_double import DEVELOPER

    with tempfile.TemporaryDirectory(prefix="rwbot-bench-open-") as tmp_name:
        tmp = Path(tmp_name)
        with _quiet_bot(tmp / "bot.log"), services.podman_service() as docker_host:
            stack = harness.Stack(docker_host, tmp)
            stop = threading.Event()
            wake = threading.Event() if args.wake else None
            # As rwbot serve builds it: the receiver rings the reconciler.
            stack.app = create_app(
                stack.settings,
                store=stack.store,
                gitlab=stack.client,
                runtime=stack.runtime,
                wake=wake,
            )
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
                bot, bare = [], []
                for i in range(args.repeat + 1):  # the first is a warm-up
                    bot_ms = _open(stack, project, author, i)
                    bare_ms = _bare(stack, project, tmp / f"bare-{i}")
                    if i:
                        bot.append(bot_ms)
                        bare.append(bare_ms)
                    print(
                        f"run {i}: bot {bot_ms:.0f} ms, bare {bare_ms:.0f} ms",
                        flush=True,
                    )
            finally:
                stop.set()
                if wake is not None:
                    wake.set()
                worker.join(timeout=10)
                stack.close()

    added = _report.median(bot) - _report.median(bare)
    rows = [
        _report.Row(
            "open -> comment ready, median",
            _report.median(bot),
            _report.median(bare),
            "ms",
        ),
        _report.Row(
            "open -> comment ready, p99",
            _report.percentile(bot, 99),
            _report.percentile(bare, 99),
            "ms",
        ),
    ]
    print()
    print(
        _report.table(
            f"MR opened -> join-link comment vs bare fetch + container start + copy; "
            f"{args.repeat} runs; idle pause {IDLE_WAIT} s, "
            f"{'woken by the receiver' if args.wake else 'no wake-up'}; "
            f"{_report.machine()['cores']} cores",
            "bare",
            rows,
        )
    )
    met = "met" if added <= GOAL_MS else "MISSED"
    print(
        f"the bot adds {added:.0f} ms at the median (goal <= {GOAL_MS:.0f} ms: {met})"
    )
    _report.write_json(
        args.json,
        {
            "bot_ms": bot,
            "bare_ms": bare,
            "added_ms": added,
            "idle_wait_s": IDLE_WAIT,
            "wake": args.wake,
            "machine": _report.machine(),
        },
    )
    return 0


def _open(stack: Any, project: dict[str, Any], author: dict[str, Any], i: int) -> float:
    mr = stack.gitlab.open_mr(
        project, f"feature-{i}", {"a.txt": f"{i}\n"}, author=author
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
