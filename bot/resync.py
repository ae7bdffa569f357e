"""The resync: what events alone cannot repair.

Webhooks get lost (the bot was down, GitLab gave up), stores get restored from
backups, people lose access without telling anyone. Every ``resync_interval``
the reconciler runs :meth:`Resync.run`, which re-reads the served projects' open
merge requests (and the tracked ones that are no longer open) from GitLab and
folds them into the store, removes runtime objects labelled as ours that no row
wants (orphans), marks due the ready workspaces whose container is gone or
stopped (so the reconciler repairs them), locks out members who lost access or
whose rights shrank, and forgets old deliveries and expired endpoint tickets.
It only changes the store and marks rows due; converging is the reconciler's
job.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import sqlalchemy as sa

from bot import audit, lifecycle, provision
from bot.accounts import Role
from bot.errors import BotError, PermanentError
from bot.gitlab import Client, NotFound, Project
from bot.lifecycle import Desired, Phase
from bot.runtime.base import Listed, Runtime, WorkspaceKey
from bot.runtime.base import Phase as RuntimePhase
from bot.settings import Settings
from bot.store import Delivery, Member, RedeemedTicket, Store, Workspace, utcnow

log = logging.getLogger(__name__)

#: How long deliveries are kept for recognising redeliveries.
DELIVERY_RETENTION = dt.timedelta(days=7)
#: How long a redeemed ticket is kept after it expired: a web replica whose clock
#: lags the worker's by less than this still finds it, and refuses it again.
TICKET_GRACE = dt.timedelta(minutes=1)


class Resync:
    def __init__(
        self, settings: Settings, store: Store, gitlab: Client, runtime: Runtime
    ) -> None:
        self.settings = settings
        self.store = store
        self.gitlab = gitlab
        self.runtime = runtime

    def run(self) -> None:
        """One resync.

        One listing of open MRs per project covers every tracked MR that is
        still open (100 a page), so the cost grows with the number of
        projects and pages, not with one request per MR; only tracked MRs
        missing from the listing (merged, closed, deleted) are read one by one.
        """
        started = time.perf_counter()
        with self.store.session() as session:
            tracked = session.scalars(
                sa.select(Workspace).where(
                    sa.or_(
                        Workspace.desired != Desired.GONE,
                        Workspace.phase != Phase.REMOVED,
                    )
                )
            ).all()
            project_ids = set(
                session.scalars(sa.select(Workspace.project_id).distinct())
            )
        seen: set[tuple[int, int]] = set()
        listed_projects: set[int] = set()
        for project in {*self.settings.projects, *map(str, project_ids)}:
            listed = self._resync_project(project)
            if listed is not None:
                project_id, iids = listed
                listed_projects.add(project_id)
                seen.update((project_id, iid) for iid in iids)
        for ws in tracked:
            if (ws.project_id, ws.mr_iid) not in seen or (
                ws.project_id not in listed_projects
            ):
                self._resync_one(ws)
        objects = list(self.runtime.list_ours())
        self._remove_orphans(objects)
        self._repair_missing(objects)
        self._sweep_access()
        forget_old(self.store)
        log.info(
            "resync done", extra={"seconds": round(time.perf_counter() - started, 3)}
        )

    def _resync_one(self, ws: Workspace) -> None:
        project = Project(ws.project_id, ws.project_path, ws.project_http_url, "")
        try:
            facts = self.gitlab.merge_request(project, ws.mr_iid)
        except NotFound:
            # A deleted MR sends no webhook; treat it like a closed one.
            facts = _gone(ws)
        self._observe([facts])

    def _resync_project(self, project_ref: str) -> tuple[int, list[int]] | None:
        """Fold the project's open MRs in; return its id and their iids."""
        try:
            project = self.gitlab.project(
                int(project_ref) if project_ref.isdigit() else project_ref
            )
            open_mrs = self.gitlab.open_merge_requests(project)
        except PermanentError as err:
            log.warning(
                "project not resynced",
                extra={"project": project_ref, "error": err.reason},
            )
            return None
        self._observe(open_mrs)
        return project.id, [facts.mr_iid for facts in open_mrs]

    def _observe(self, many: list[lifecycle.MergeRequestFacts]) -> None:
        if not many:
            return
        with self.store.session() as session:
            rows = {
                (ws.project_id, ws.mr_iid): ws
                for ws in session.scalars(
                    sa.select(Workspace).where(
                        Workspace.project_id.in_({f.project_id for f in many}),
                        Workspace.mr_iid.in_({f.mr_iid for f in many}),
                    )
                )
            }
            for facts in many:
                ws = rows.get((facts.project_id, facts.mr_iid))
                if ws is None:
                    if facts.state == "opened":
                        session.add(lifecycle.new_workspace(facts))
                        log.info(
                            "resync found an untracked merge request",
                            extra={"project": facts.project_id, "mr": facts.mr_iid},
                        )
                elif lifecycle.observe(ws, facts):
                    log.info(
                        "resync corrected a merge request",
                        extra={"project": facts.project_id, "mr": facts.mr_iid},
                    )

    def _sweep_access(self) -> None:
        """Act on access lost since people joined, without waiting for them to
        try again: the same decision as a join (:func:`provision.access`, which
        honours invites and revokes).

        No role left (removed, lowered below Reporter, blocked) → locked. A
        writer lowered to read-only → locked too: that ends their shells, which
        still carry the write group, and takes the group away; opening the join
        link again provisions them read-only (the sweep cannot do that itself,
        as it lacks the commit email that only the person's own sign-in shows).
        A raised role waits for the next join or terminal connection.
        """
        with self.store.session() as session:
            rows = session.execute(
                sa.select(Workspace, Member.gitlab_user_id, Member.role)
                .join(Member, Member.workspace_id == Workspace.id)
                .where(Member.locked.is_(False), Workspace.phase == Phase.READY)
            ).all()
        for ws, user_id, had in rows:
            try:
                decided = provision.access(
                    self.settings, self.store, self.gitlab, ws, user_id
                )
                if isinstance(decided, provision.Refused):
                    detail = f"user {user_id} locked"
                elif had == Role.WRITE.value and decided is Role.READ:
                    detail = f"user {user_id} lowered to read, locked until they rejoin"
                else:
                    continue
                provision.lock(self.store, self.runtime, ws, user_id)
            except BotError as err:
                # One member's GitLab answer or workspace must not stop the
                # sweep for everyone else; the next resync tries again.
                log.warning(
                    "access not swept",
                    extra={"workspace": ws.id, "user_id": user_id, "error": str(err)},
                )
                continue
            audit.record(
                self.store,
                ws.project_id,
                ws.mr_iid,
                "bot",
                "access lost",
                "ok",
                detail,
            )

    def _remove_orphans(self, listed: list[Listed]) -> None:
        with self.store.session() as session:
            wanted = {
                (row.project_id, row.mr_iid): row.generation
                for row in session.execute(
                    sa.select(
                        Workspace.project_id, Workspace.mr_iid, Workspace.generation
                    ).where(Workspace.desired != Desired.GONE)
                )
            }
        for found in listed:
            generation = wanted.get((found.key.project_id, found.key.mr_iid))
            if generation is None:
                log.info(
                    "removing an orphaned workspace", extra={"workspace": found.name}
                )
                self.runtime.remove(found.key)

    def _repair_missing(self, objects: list[Listed]) -> None:
        """Mark due the ready workspaces that are not running any more.

        A container removed or stopped behind the bot's back sends no event;
        once the row is due the reconciler recreates a missing one (its volume
        may have survived) and reports a stopped one in the comment. A row
        whose generation the listing lacks has nothing left; the others are
        asked for their status, one call each. The accounts of a recreated
        container are gone with the old one, so its members count as locked
        until they open the join link again (which provisions them anew).
        """
        present = {(found.key, found.generation) for found in objects}
        with self.store.session() as session:
            ready = session.execute(
                sa.select(
                    Workspace.id,
                    Workspace.project_id,
                    Workspace.mr_iid,
                    Workspace.generation,
                ).where(
                    Workspace.desired == Desired.RUNNING,
                    Workspace.phase == Phase.READY,
                )
            ).all()
        due, gone = [], []
        for row_id, project_id, mr_iid, generation in ready:
            key = WorkspaceKey(project_id, mr_iid)
            phase = RuntimePhase.MISSING
            if (key, generation) in present:
                status = self.runtime.status(key)
                if status.generation == generation:
                    phase = status.phase
            if phase == RuntimePhase.RUNNING:
                continue
            log.info(
                "resync found a workspace not running",
                extra={"workspace": key.slug(), "phase": phase.value},
            )
            due.append(row_id)
            if phase == RuntimePhase.MISSING:
                gone.append(row_id)
        if not due:
            return
        with self.store.session() as session:
            session.execute(
                sa.update(Workspace)
                .where(Workspace.id.in_(due))
                .values(due_at=utcnow())
            )
            session.execute(
                sa.update(Member)
                .where(Member.workspace_id.in_(gone))
                .values(locked=True, connected=0)
            )


def forget_old(store: Store) -> None:
    """Delete deliveries past their retention and redeemed endpoint tickets past
    their expiry (with :data:`TICKET_GRACE`), so neither table keeps growing."""
    now = utcnow()
    with store.session() as session:
        session.execute(
            sa.delete(Delivery).where(Delivery.received_at < now - DELIVERY_RETENTION)
        )
        session.execute(
            sa.delete(RedeemedTicket).where(
                RedeemedTicket.expires_at < now - TICKET_GRACE
            )
        )


def _gone(ws: Workspace) -> lifecycle.MergeRequestFacts:
    return lifecycle.MergeRequestFacts(
        project_id=ws.project_id,
        mr_iid=ws.mr_iid,
        project_path=ws.project_path,
        project_http_url=ws.project_http_url,
        mr_url=ws.mr_url,
        title=ws.title,
        state="closed",
        head_sha=ws.head_sha,
        draft=ws.draft,
        is_fork=ws.is_fork,
        source_branch=ws.source_branch,
        updated_at=None,
        author_id=ws.author_id,
    )
