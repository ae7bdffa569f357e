"""One reconcile pass over N tracked workspaces, against the bare API calls it needs.

For each N, the GitLab double runs in its own process (``benchmarks._double``)
with N open merge requests over 10 projects; the store holds N settled rows
(phase ready, comment posted, nothing due) and the runtime is in memory
(``benchmarks._fakes``). 1 % of the MRs get a new head commit before each pass,
as if their webhooks had been missed, so a pass has real work to do.

- Bot: ``Reconciler.resync()`` (re-reads every tracked MR, lists the projects'
  open MRs and the runtime's objects), then ``run_once()`` until nothing is
  due (the changed rows: runtime status and a comment edit each).
- Baseline: the N ``GET .../merge_requests/:iid`` a resync cannot avoid, as a
  bare python-gitlab loop against the same double.

Reported per N: median pass time (and the slowest), per-workspace time, the
ratio bot/baseline, and linearity time(10N)/time(N). If a pass at 1,000 takes
over a second, a cProfile of one more pass says where the time goes.

Run: ``.venv/bin/python -m benchmarks.reconcile [--sizes 100,1000,10000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import gitlab

from benchmarks import _report
from benchmarks._fakes import MemoryRuntime
from bot import comments, lifecycle
from bot.gitlab import Client
from bot.hooks import parse_time
from bot.lifecycle import Phase
from bot.reconciler import Reconciler
from bot.runtime.base import WorkspaceKey
from bot.settings import Settings
from bot.store import Store

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = 10
CHANGED_SHARE = 0.01
PUBLIC_URL = "http://127.0.0.1:8080"
#: Note ids the store holds for MRs whose comment is never edited in a pass.
UNTOUCHED_NOTE_IDS = 10**9
PROFILE_SIZE = 1000
PROFILE_THRESHOLD = 1.0  # seconds per pass


@dataclass
class Size:
    n: int
    changed: int
    bot: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    converged: list[int] = field(default_factory=list)
    profile: str = ""

    @property
    def bot_median(self) -> float:
        return _report.median(self.bot)

    @property
    def baseline_median(self) -> float:
        return _report.median(self.baseline)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="100,1000,10000",
        help="comma-separated numbers of workspaces",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="measured passes per size, after one warm-up",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"profile a pass at every size, not only at "
        f"{PROFILE_SIZE} when it takes over {PROFILE_THRESHOLD:g} s",
    )
    parser.add_argument("--json", metavar="PATH", help="also write figures here")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The bot logs every resync and correction; keep the benchmark's own lines.
    for noisy in ("bot", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    sizes = [int(s.replace("_", "")) for s in options.sizes.split(",") if s.strip()]
    results = [measure(n, options.repeat, options.profile) for n in sizes]
    figures = _figures(results, options)
    print()
    print(figures["table"])
    print(figures["linearity_text"])
    for size in results:
        if size.profile:
            print(
                f"\nWhere the time goes in one pass at N={size.n:,} (cProfile; "
                f"ms/unit = per workspace):"
            )
            print(size.profile)
    _report.write_json(options.json, figures)

    return 0


def measure(n: int, repeat: int, always_profile: bool) -> Size:
    size = Size(n=n, changed=max(1, round(n * CHANGED_SHARE)))
    log.info("N=%d: seeding the GitLab double and the store", n)
    with (
        _double(n, size.changed) as (hello, double_in, double_out),
        tempfile.TemporaryDirectory(prefix="rwbot-bench-") as tmp,
    ):
        settings = Settings(
            gitlab_url=hello["url"],
            gitlab_token=hello["token"],
            webhook_secret=secrets.token_hex(16),  # no webhooks in this benchmark
            public_url=PUBLIC_URL,
            database_url=f"sqlite:///{tmp}/bot.db",
            bot_user_id=hello["bot_user_id"],
            resync_interval=3600,
        )
        store = Store(settings.database_url)
        store.migrate()
        keys = _seed_store(store, settings, hello)
        runtime = MemoryRuntime((key, 1) for key in keys)
        reconciler = Reconciler(settings, store, Client(settings), runtime)
        bare = gitlab.Gitlab(hello["url"], private_token=hello["token"])

        def toggle() -> None:
            double_in.write("toggle\n")
            double_in.flush()
            if double_out.readline().strip() != "ok":
                raise RuntimeError("the GitLab double did not toggle")

        def bot_pass() -> None:
            toggle()
            seconds, converged = _timed(lambda: _pass(reconciler))
            size.bot.append(seconds)
            size.converged.append(converged)

        def baseline_pass() -> None:
            seconds, _ = _timed(lambda: _bare_gets(bare, keys))
            size.baseline.append(seconds)

        for rep in range(repeat + 1):
            # Alternate which goes first so that drift hurts both alike.
            for step in (bot_pass, baseline_pass)[:: 1 if rep % 2 else -1]:
                step()
            log.info(
                "N=%d %s: bot %.3f s, baseline %.3f s, %d converged",
                n,
                "warm-up" if rep == 0 else f"pass {rep}",
                size.bot[-1],
                size.baseline[-1],
                size.converged[-1],
            )
        # The warm-up (first) pass is not a measurement.
        del size.bot[0], size.baseline[0], size.converged[0]

        slow = n == PROFILE_SIZE and size.bot_median > PROFILE_THRESHOLD
        if always_profile or slow:
            toggle()
            size.profile = _profile(reconciler, n)
        store.dispose()

    return size


@contextlib.contextmanager
def _double(n: int, changed: int) -> Iterator[tuple[dict[str, Any], IO[str], IO[str]]]:
    argv = [
        sys.executable,
        "-m",
        "benchmarks._double",
        "--mrs",
        str(n),
        "--projects",
        str(PROJECTS),
        "--changed",
        str(changed),
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        hello = json.loads(proc.stdout.readline())
        yield hello, proc.stdin, proc.stdout
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _seed_store(
    store: Store, settings: Settings, hello: dict[str, Any]
) -> list[WorkspaceKey]:
    """One settled row per MR: ready, running its head, comment up to date."""
    notes = {(pid, iid): note for pid, iid, note in hello["notes"]}
    keys = []
    with store.session() as session:
        for i, mr in enumerate(hello["mrs"]):
            key = WorkspaceKey(mr["project_id"], mr["iid"])
            ws = lifecycle.new_workspace(_facts(mr))
            ws.phase = Phase.READY
            ws.running_sha = ws.head_sha
            ws.due_at = None
            ws.note_id = notes.get((key.project_id, key.mr_iid), UNTOUCHED_NOTE_IDS + i)
            ws.note_digest = comments.digest(
                comments.render(
                    ws, public_url=settings.public_url, prefix=settings.command_prefix
                )
            )
            session.add(ws)
            keys.append(key)

    return keys


def _facts(mr: dict[str, Any]) -> lifecycle.MergeRequestFacts:
    return lifecycle.MergeRequestFacts(
        project_id=mr["project_id"],
        mr_iid=mr["iid"],
        project_path=mr["project_path"],
        project_http_url=mr["project_http_url"],
        mr_url=mr["web_url"],
        title=mr["title"],
        state=mr["state"],
        head_sha=mr["sha"],
        draft=mr["draft"],
        is_fork=mr["is_fork"],
        source_branch=mr["source_branch"],
        updated_at=parse_time(mr["updated_at"]),
    )


def _pass(reconciler: Reconciler) -> int:
    """A full pass: resync, then converge whatever became due; returns how many."""
    reconciler.resync()
    converged = 0
    while done := reconciler.run_once(limit=50):
        converged += done

    return converged


def _bare_gets(gl: gitlab.Gitlab, keys: list[WorkspaceKey]) -> int:
    for key in keys:
        gl.projects.get(key.project_id, lazy=True).mergerequests.get(key.mr_iid)

    return 0


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    result = fn()

    return time.perf_counter() - started, result


def _profile(reconciler: Reconciler, n: int) -> str:
    text, stats = _report.profile(lambda: _pass(reconciler), per=n, limit=20)
    total = stats.total_tt  # type: ignore[attr-defined]
    waiting = _report.own_time(stats, "recv_into")
    summary = (
        f"total {total:.2f} s under the profiler, which slows the Python side "
        f"more than the waiting; waiting for GitLab's answers (socket reads) "
        f"{waiting:.2f} s ({waiting / total:.0%}); the rest is the bot's own "
        f"work in this process (SQLAlchemy, python-gitlab, requests, ...)."
    )

    return summary + "\n" + text


def _figures(results: list[Size], options: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for size in results:
        rows.append(
            _report.Row(
                f"N={size.n:,} pass (median of {len(size.bot)})",
                size.bot_median,
                size.baseline_median,
                "s",
            )
        )
        rows.append(
            _report.Row(
                f"N={size.n:,} per workspace",
                size.bot_median / size.n * 1000,
                size.baseline_median / size.n * 1000,
                "ms",
            )
        )
        rows.append(
            _report.Row(
                f"N={size.n:,} slowest pass",
                max(size.bot),
                max(size.baseline),
                "s",
            )
        )
    linearity = _linearity(results)
    machine = _report.machine()
    title = (
        f"Reconcile pass (resync + converge {CHANGED_SHARE:.0%} changed) vs bare "
        f"python-gitlab GETs; GitLab double in its own process; "
        f"{machine['cores']} cores, {machine['date']}"
    )
    linearity_text = "Linearity time(10N)/time(N), 10.0 = linear: " + (
        "; ".join(
            f"{a:,}->{b:,}: bot {bot:.1f}, baseline {base:.1f}"
            for a, b, bot, base in linearity
        )
        or "needs two sizes a factor of 10 apart"
    )
    linearity_text += "\nRows converged per pass (MRs changed per pass): " + ", ".join(
        f"N={s.n:,}: {sorted(set(s.converged))} ({s.changed})" for s in results
    )

    return {
        "benchmark": "reconcile",
        "machine": machine,
        "options": vars(options),
        "table": _report.table(title, "baseline", rows),
        "linearity_text": linearity_text,
        "sizes": [
            {
                "n": s.n,
                "changed_per_pass": s.changed,
                "converged_per_pass": s.converged,
                "bot_seconds": s.bot,
                "baseline_seconds": s.baseline,
                "bot_median": s.bot_median,
                "baseline_median": s.baseline_median,
                "ratio": _report.ratio(s.bot_median, s.baseline_median),
                "bot_ms_per_workspace": s.bot_median / s.n * 1000,
                "profile": s.profile,
            }
            for s in results
        ],
        "linearity": [
            {"from": a, "to": b, "bot": bot, "baseline": base}
            for a, b, bot, base in linearity
        ],
    }


def _linearity(results: list[Size]) -> list[tuple[int, int, float, float]]:
    by_n = {s.n: s for s in results}
    return [
        (
            s.n,
            s.n * 10,
            by_n[s.n * 10].bot_median / s.bot_median,
            by_n[s.n * 10].baseline_median / s.baseline_median,
        )
        for s in results
        if s.n * 10 in by_n
    ]


if __name__ == "__main__":
    sys.exit(main())
