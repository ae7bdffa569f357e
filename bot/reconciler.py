"""The reconciler: makes the runtime and the MR comment match the store.

Work is level-triggered. Each pass claims a few due workspace rows (see
:func:`bot.store.claim`), looks at what the row says the workspace should be,
asks the runtime what it is, acts to close the gap, and edits the MR comment if
its text changed. Every step is idempotent, so a pass interrupted by ``kill -9``
is simply done again by whichever worker claims the row once the lease runs out.

A resync, every ``resync_interval`` seconds, repairs what events cannot: it
re-reads the tracked merge requests and the served projects' open ones from
GitLab (a webhook may never have arrived) and removes runtime objects labelled
as ours that no row wants any more (an orphan left by a lost store).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import random
import socket
import threading
import time

from prometheus_client import Histogram

from bot import audit, comments, control, lifecycle, provision, resync
from bot.errors import BotError, PermanentError, TemporaryError
from bot.gitlab import Client, NotFound
from bot.lifecycle import Action, Desired, Phase
from bot.runtime.base import Phase as RuntimePhase
from bot.runtime.base import Runtime, Spec, WorkspaceKey
from bot.runtime.workspace import DevfilePolicy
from bot.settings import Settings
from bot.store import Store, Workspace, claim, release, utcnow

log = logging.getLogger(__name__)

RECONCILE_SECONDS = Histogram(
    "rwbot_reconcile_seconds", "Time to converge one workspace", ["outcome"]
)
#: Seconds between looks at a workspace the runtime is still starting.
STARTING_POLL = 2.0
#: Temporary failures in a row after which the comment says the bot is retrying.
SAY_RETRYING_AFTER = 3


def backoff(attempts: int, base: float, cap: float, retry_after: float | None) -> float:
    """Seconds to wait before retry number ``attempts`` (1-based).

    Exponential with "equal jitter" so that many workspaces failing together
    (GitLab down) do not all come back in the same second, and never sooner
    than the server asked for.
    """
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    delay = delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - not crypto
    if retry_after is not None:
        delay = max(delay, retry_after)
    return float(delay)


def lifecycle_entry(
    before: str, restarting: bool, ws: Workspace, deadline: tuple[str, str] | None
) -> tuple[str, str, str] | None:
    """The audit entry (action, outcome, detail) for what a pass did to the
    runtime, judged from the phase before and after it; None if nothing.
    ``deadline`` names an idle stop or expiry, which look like a stop and a
    removal otherwise."""
    after = ws.phase
    if after == before and not (restarting and after == Phase.READY):
        return None
    if after == Phase.READY:
        action = "restart" if restarting else "start"
        return action, "ok", f"commit {(ws.running_sha or '')[:12]}"
    if after == Phase.FAILED:
        return "fail", "failed", ws.reason
    if after in (Phase.STOPPED, Phase.REMOVED) and deadline is not None:
        return deadline[0], "ok", deadline[1]
    if after == Phase.STOPPED:
        return "stop", "ok", ""
    if after == Phase.REMOVED:
        closed = ws.mr_state in ("closed", "merged")
        return "remove", "ok", f"the merge request was {ws.mr_state}" if closed else ""
    return None


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        gitlab: Client,
        runtime: Runtime,
        *,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.gitlab = gitlab
        self.runtime = runtime
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.control = control.Control(settings, store, gitlab, runtime)
        self.resyncer = resync.Resync(settings, store, gitlab, runtime)
        self.next_check: dt.datetime | None = None
        #: What a deadline did this pass (idle stop, expiry), for the audit log.
        self.deadline: tuple[str, str] | None = None
        # A process that just started resyncs at once: whatever happened while
        # it was down is repaired without waiting a whole interval.
        self._last_resync = -math.inf

    # -- driving --------------------------------------------------------------

    def run_once(self, limit: int = 10) -> int:
        """Claim up to ``limit`` due workspaces and converge each; return how many."""
        worker = f"{self.name}:{threading.get_ident()}"
        with self.store.session() as session:
            rows = claim(session, worker, self.settings.claim_lease, limit)
        for ws in rows:
            try:
                self.converge(ws, worker)
            except TemporaryError:
                # converge answers GitLab's and the runtime's own; this is the
                # store gone mid-pass. The loop pauses, and the rows still
                # claimed are this worker's to claim again once it is back.
                raise
            except Exception:
                # A bug, not a condition we know: log it, give the row back with
                # backoff, and go on with the other rows of this batch.
                log.exception("workspace pass failed", extra={"workspace": ws.id})
                retry_at = self._retry_at(ws.attempts + 1, TemporaryError("bug"))
                with self.store.session() as session:
                    release(
                        session,
                        ws,
                        worker,
                        ws.version,
                        retry_at,
                        attempts=ws.attempts + 1,
                    )
        return len(rows)

    def run_forever(
        self,
        stop: threading.Event,
        idle_wait: float = 0.5,
        wake: threading.Event | None = None,
    ) -> None:
        """Work until ``stop`` is set; resync on schedule.

        With nothing due, the loop looks again after ``idle_wait`` seconds, or as
        soon as ``wake`` is set: the webhook receiver in the same process sets it
        once a delivery that needs work is committed (``rwbot serve``), so a new
        MR is picked up at once rather than up to ``idle_wait`` later. Whoever
        sets ``stop`` should set ``wake`` too, or stopping waits out the pause.
        """
        while not stop.is_set():
            try:
                if (
                    time.monotonic() - self._last_resync
                    >= self.settings.resync_interval
                ):
                    self.resync()
                idle = self.run_once() == 0
                if idle and (wake or stop).wait(idle_wait) and wake is not None:
                    # Cleared before the next claim, which sees the committed
                    # row: a delivery that rings after this is not missed.
                    wake.clear()
            except TemporaryError as err:
                log.warning("reconciler paused", extra={"error": str(err)})
                stop.wait(min(self.settings.retry_max, 5.0))
            except Exception:
                log.exception("reconciler pass failed")
                stop.wait(1.0)

    # -- one workspace --------------------------------------------------------

    def converge(self, ws: Workspace, worker: str) -> None:
        """One pass for one claimed workspace: runtime first, then the comment.

        A temporary failure of either step reschedules the row with backoff; a
        permanent one is reported in the comment and not retried.
        """
        key = WorkspaceKey(ws.project_id, ws.mr_iid)
        started = time.perf_counter()
        retry: TemporaryError | None = None
        changes: dict[str, object] = {}
        self.next_check = self.deadline = None

        try:
            # Commands first, in comment order; they may change what the
            # workspace should be, so the row is read again afterwards.
            self.control.run_pending(ws.id)
        except TemporaryError as err:
            retry = err
        except PermanentError as err:
            log.error(
                "command failed", extra={"workspace": key.slug(), "error": err.reason}
            )
        ws = self._reload(ws)
        seen_version = ws.version
        before, restarting = ws.phase, ws.restart

        try:
            if retry is None:
                changes.update(self._converge_runtime(ws, key))
        except TemporaryError as err:
            retry = err
        except PermanentError as err:
            changes.update(phase=Phase.FAILED, reason=err.reason)
            log.info(
                "workspace failed",
                extra={"workspace": key.slug(), "reason": err.reason},
            )
        if retry is not None and ws.attempts + 1 >= SAY_RETRYING_AFTER:
            # Tell people why nothing happens, while still retrying.
            changes["reason"] = f"retrying: {retry}"
        for name, value in changes.items():
            setattr(ws, name, value)
        entry = lifecycle_entry(before, restarting, ws, self.deadline)

        try:
            # Revoked while it was not running, or the lock failed: lock now.
            if retry is None and ws.phase == Phase.READY:
                self.control.grants.lock_revoked(ws)
        except TemporaryError as err:
            retry = err
        except PermanentError as err:
            log.error(
                "revoked accounts not locked",
                extra={"workspace": key.slug(), "error": err.reason},
            )

        try:
            changes.update(self._update_comment(ws))
        except TemporaryError as err:
            retry = retry or err
        except PermanentError as err:
            log.error(
                "comment update failed",
                extra={"workspace": key.slug(), "error": err.reason},
            )

        # After the comment, which people wait for; the widget link can follow.
        try:
            if retry is None:
                changes.update(self._update_environment(ws))
        except TemporaryError as err:
            retry = err
        except BotError as err:
            # The widget link is a convenience: the workspace works without it.
            log.warning(
                "environment not updated",
                extra={"workspace": key.slug(), "error": str(err)},
            )

        attempts = ws.attempts + 1 if retry else 0
        due_at = self.next_check
        if retry is not None:
            due_at = self._retry_at(attempts, retry)
            log.warning(
                "workspace will be retried",
                extra={
                    "workspace": key.slug(),
                    "error": str(retry),
                    "attempt": attempts,
                },
            )
        with self.store.session() as session:
            release(
                session, ws, worker, seen_version, due_at, attempts=attempts, **changes
            )
            if entry is not None:
                audit.add(session, ws.project_id, ws.mr_iid, audit.BOT, *entry)
        outcome = "retry" if retry else "failed" if ws.phase == Phase.FAILED else "ok"
        RECONCILE_SECONDS.labels(outcome).observe(time.perf_counter() - started)

    def _reload(self, ws: Workspace) -> Workspace:
        with self.store.session() as session:
            fresh = session.get(Workspace, ws.id)
        assert fresh is not None
        return fresh

    def _retry_at(self, attempts: int, err: TemporaryError) -> dt.datetime:
        delay = backoff(
            attempts, self.settings.retry_base, self.settings.retry_max, err.retry_after
        )
        return utcnow() + dt.timedelta(seconds=delay)

    def _converge_runtime(self, ws: Workspace, key: WorkspaceKey) -> dict[str, object]:
        plan = lifecycle.plan(ws, start_drafts=self.settings.start_drafts)
        if plan.action == Action.REMOVE:
            self.runtime.remove(key)
            # A reopened MR's new workspace starts a lifetime of its own.
            none = {"stop_at": None, "expires_at": None, "started_at": None}
            return {"phase": Phase.REMOVED, "reason": "", **none}
        if plan.action == Action.STOP:
            self.runtime.stop(key)
            return {"phase": Phase.STOPPED, "reason": ""}
        if plan.action == Action.HOLD:
            return {"phase": plan.phase, "reason": ""}

        if ws.restart:
            self.runtime.stop(key)
        status = self.runtime.status(key)
        current = status.generation == ws.generation
        if current and status.phase == RuntimePhase.RUNNING and ws.running_sha:
            return {"phase": Phase.READY, "reason": "", **self._timers(ws, key)}
        if current and status.phase == RuntimePhase.STOPPED and ws.phase == Phase.READY:
            return {
                "phase": Phase.FAILED,
                "reason": f"the workspace stopped unexpectedly: {status.reason}",
            }
        if ws.phase == Phase.FAILED and not ws.restart:
            # No automatic retry of a permanent failure (no crash loop); a
            # reopen or a restart command starts a new attempt.
            return {}
        spec = self._spec(ws, key, plan.sha)
        started = self.runtime.ensure_running(spec)
        if started.notes or not current:
            ws.notices = "\n".join(started.notes)
        ws.running_sha = ws.running_sha if current and ws.running_sha else plan.sha
        if started.phase == RuntimePhase.FAILED:
            raise PermanentError(started.reason or "the workspace did not start")
        if started.phase != RuntimePhase.RUNNING:
            # A runtime that starts asynchronously (Kubernetes) is polled
            # until ready; it finishes preparing on one of these calls.
            self.next_check = utcnow() + dt.timedelta(seconds=STARTING_POLL)
            return {
                "phase": Phase.STARTING,
                "reason": "",
                "running_sha": ws.running_sha,
                "restart": False,
                "notices": ws.notices,
            }
        return {
            "phase": Phase.READY,
            "reason": "",
            "running_sha": ws.running_sha,
            "restart": False,
            "notices": ws.notices,
            **self._timers(ws, key),
        }

    def _timers(self, ws: Workspace, key: WorkspaceKey) -> dict[str, object]:
        """Idle stop and expiry of a running workspace.

        Deadlines are set when it starts, pushed back by activity (joins, open
        terminals, ``extend``), and enforced here. The row is scheduled to be
        looked at again when a warning is due or a deadline passes, so the
        comment warns ahead and nothing depends on a timer in memory.
        """
        s, now = self.settings, utcnow()
        started_at = ws.started_at if ws.expires_at else now
        expires_at = ws.expires_at or now + dt.timedelta(seconds=s.max_lifetime)
        stop_at = ws.stop_at or now + dt.timedelta(seconds=s.idle_timeout)
        if provision.anyone_connected(self.store, ws):
            stop_at = max(stop_at, now + dt.timedelta(seconds=s.idle_timeout))
        if now >= expires_at:
            self.runtime.remove(key)
            self.deadline = ("expire", f"maximum lifetime of {s.max_lifetime}s")
            return {
                "desired": Desired.GONE,
                "phase": Phase.REMOVED,
                "reason": "it reached its maximum lifetime; comment "
                f"`{s.command_prefix} start` for a new one",
                "stop_at": None,
                "expires_at": None,
                "started_at": None,
            }
        if now >= stop_at:
            self.runtime.stop(key)
            self.deadline = ("idle stop", f"nobody connected for {s.idle_timeout}s")
            return {
                "desired": Desired.STOPPED,
                "phase": Phase.STOPPED,
                "reason": "nobody used it for a while; comment "
                f"`{s.command_prefix} start` to start it again",
                "stop_at": None,
            }
        warn = dt.timedelta(seconds=s.warn_before)
        upcoming = [
            t
            for t in (stop_at - warn, stop_at, expires_at - warn, expires_at)
            if t > now
        ]
        self.next_check = min(upcoming) if upcoming else None
        return {"stop_at": stop_at, "expires_at": expires_at, "started_at": started_at}

    def _spec(self, ws: Workspace, key: WorkspaceKey, sha: str) -> Spec:
        s = self.settings
        return Spec(
            key=key,
            generation=ws.generation,
            image=s.workspace_image,
            source=lifecycle.checkout_source(s, ws, sha),
            memory=s.workspace_memory,
            cpus=s.workspace_cpus,
            pids=s.workspace_pids,
            network=s.workspace_network,
            checkout_root=s.workspace_root,
            start_timeout=s.start_timeout,
            devfile=DevfilePolicy(
                s.devfile_images, s.devfile_max_memory, s.devfile_max_cpu
            ),
        )

    def _update_environment(self, ws: Workspace) -> dict[str, object]:
        """Keep the MR widget's "View app" pointing at the join page.

        A deployment is recorded for every commit the workspace comes to run
        (start, sync, rebuild); the environment is stopped when the workspace
        is removed, which takes the link off the widget.
        """
        name = self.settings.environment_name.format(iid=ws.mr_iid)
        if not name:
            return {}
        if (
            ws.phase == Phase.READY
            and ws.running_sha
            and ws.running_sha != ws.deployed_sha
        ):
            url = comments.join_url(self.settings.public_url, ws.project_id, ws.mr_iid)
            # A fork's branch exists only in the fork, and GitLab refuses a ref
            # the project lacks; the MR's own ref is in the project for every MR.
            ref = (
                ws.source_branch
                if ws.source_branch and not ws.is_fork
                else f"refs/merge-requests/{ws.mr_iid}/head"
            )
            environment_id = ws.environment_id
            try:
                environment_id = self.gitlab.ensure_environment(
                    ws.project_id, name, url
                )
                self.gitlab.deploy(ws.project_id, name, ws.running_sha, ref)
            except TemporaryError:
                raise
            except BotError as err:
                # Said once per commit, not on every pass: retrying the same
                # refused call would not help; the next commit tries again.
                log.warning(
                    "deployment not recorded",
                    extra={
                        "project": ws.project_id,
                        "mr": ws.mr_iid,
                        "error": str(err),
                    },
                )
                return {
                    "environment_id": environment_id,
                    "deployed_sha": ws.running_sha,
                }
            return {"environment_id": environment_id, "deployed_sha": ws.running_sha}
        if ws.phase == Phase.REMOVED and ws.environment_id is not None:
            self.gitlab.stop_environment(ws.project_id, ws.environment_id)
            return {"environment_id": None, "deployed_sha": None}
        return {}

    def _update_comment(self, ws: Workspace) -> dict[str, object]:
        joined = tuple(
            comments.Member(m.username, m.role)
            for m in provision.members(self.store, ws)
        )
        body = comments.render(
            ws,
            public_url=self.settings.public_url,
            prefix=self.settings.command_prefix,
            members=joined,
            warn_before=self.settings.warn_before,
            endpoints_domain=self.settings.endpoints_domain,
        )
        digest = comments.digest(body)
        if digest == ws.note_digest:
            return {}
        note_id = ws.note_id or self.gitlab.find_note(
            ws.project_id,
            ws.mr_iid,
            comments.marker(ws.project_id, ws.mr_iid),
            self.settings.bot_user_id,
        )
        if note_id is not None:
            try:
                self.gitlab.edit_note(ws.project_id, ws.mr_iid, note_id, body)
            except NotFound:
                note_id = None  # someone deleted it: post a new one
        if note_id is None:
            note_id = self.gitlab.create_note(ws.project_id, ws.mr_iid, body)
        ws.note_id, ws.note_digest = note_id, digest
        return {"note_id": note_id, "note_digest": digest}

    # -- resync ---------------------------------------------------------------

    def resync(self) -> None:
        """Correct what missed webhooks and lost stores left wrong."""
        self._last_resync = time.monotonic()
        self.resyncer.run()
