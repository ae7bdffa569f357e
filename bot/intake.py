"""Recording a verified webhook delivery, in one short transaction.

The delivery row (unique by its key) and the merge request's desired state are
written together, so an acknowledged delivery has always taken effect and a
redelivery of the same event changes nothing. Nothing slow happens here: the
reconciler does the work later.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from bot import commands, hooks, lifecycle, wakeup
from bot.settings import Settings
from bot.store import CommandNote, Delivery, Store, Workspace, utcnow

log = logging.getLogger(__name__)

#: Outcomes of :func:`record` that leave a row due for the reconciler.
WORK = frozenset({"applied", "queued"})


def record(
    store: Store, settings: Settings, key: str, event: hooks.Event, event_name: str
) -> str:
    """Store the delivery; return its outcome.

    Outcomes: applied, unchanged (nothing new), duplicate (seen before), ignored.
    """
    for attempt in (1, 2):
        try:
            return _record(store, settings, key, event, event_name)
        except IntegrityError:
            # Either the same delivery raced in through another process
            # (duplicate), or two events created the same MR row at once: the
            # second attempt sees the other's row and updates it.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _record(
    store: Store, settings: Settings, key: str, event: hooks.Event, event_name: str
) -> str:
    with store.transaction() as conn:
        outcome, project_id, mr_iid = _apply(conn, settings, event)
        if outcome in WORK:
            # Heard by workers only if this transaction commits.
            wakeup.notify(conn)
        # Inserted last, and only if the key is new: a redelivery rolls back
        # whatever _apply did, in the same round trip that detects it.
        result = conn.execute(
            _INSERT_DELIVERY[conn.dialect.name],
            {
                "key": key,
                "event": event_name[:64],
                "received_at": utcnow(),
                "project_id": project_id,
                "mr_iid": mr_iid,
                "outcome": outcome,
            },
        )
        if result.first() is None:
            conn.rollback()
            return "duplicate"
    return outcome


# Statements are built once: building them per request cost more than running
# them (benchmarks/intake.py).
_INSERT_DELIVERY = {
    # RETURNING tells whether a row went in: rowcount is -1 on PostgreSQL here.
    name: dialect.insert(Delivery.__table__)
    .on_conflict_do_nothing(index_elements=["key"])
    .returning(Delivery.__table__.c.id)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}
_WORKSPACES = Workspace.__table__
_ROW_VALUES = sa.select(_WORKSPACES).where(
    _WORKSPACES.c.project_id == sa.bindparam("project_id"),
    _WORKSPACES.c.mr_iid == sa.bindparam("mr_iid"),
)
_ROW = sa.select(Workspace).where(
    Workspace.project_id == sa.bindparam("project_id"),
    Workspace.mr_iid == sa.bindparam("mr_iid"),
)


def _apply(
    conn: sa.Connection, settings: Settings, event: hooks.Event
) -> tuple[str, int | None, int | None]:
    if isinstance(event, hooks.Ignored):
        return "ignored", None, None
    if isinstance(event, hooks.NoteEvent):
        return _queue_commands(conn, settings, event), event.project_id, event.mr_iid

    facts = facts_from_event(event)
    key = {"project_id": facts.project_id, "mr_iid": facts.mr_iid}
    row = conn.execute(_ROW_VALUES, key).first()
    # Most deliveries change nothing the bot keeps (approvals, edits of the
    # description, redeliveries under a new key). observe() only reads and sets
    # attributes, so a plain copy of the row answers "would anything change?"
    # without the ORM, whose loading was half of intake's time (0.15 of 0.3 ms,
    # benchmarks/intake.py). Changes then go through the ORM as ever.
    if row is not None and not lifecycle.observe(_copy_of(row), facts):
        return "unchanged", facts.project_id, facts.mr_iid

    with orm.Session(bind=conn) as session:
        ws = session.scalars(_ROW, key).one_or_none()
        if ws is None:
            session.add(lifecycle.new_workspace(facts))
            changed = True
        else:
            changed = lifecycle.observe(ws, facts)
        session.flush()

    return ("applied" if changed else "unchanged"), facts.project_id, facts.mr_iid


def _copy_of(row: sa.Row[Any]) -> Workspace:
    """A throwaway stand-in for the row's Workspace: what it changes is dropped."""
    return cast(Workspace, SimpleNamespace(**row._mapping))


def _row(session: orm.Session, project_id: int, mr_iid: int) -> Workspace | None:
    return session.scalars(
        _ROW, {"project_id": project_id, "mr_iid": mr_iid}
    ).one_or_none()


def _queue_commands(
    conn: sa.Connection, settings: Settings, event: hooks.NoteEvent
) -> str:
    """Queue a new comment that holds commands for the reconciler.

    Edited comments never run again (GitLab sends them as ``update``), and a
    comment already queued (redelivered under another key) is not queued twice.
    """
    if event.action != "create" or event.system:
        return "ignored"
    if not commands.parse(event.body, settings.command_prefix):
        return "ignored"
    with orm.Session(bind=conn) as session:
        outcome = _queue_note(session, event)
        session.flush()
    return outcome


def _queue_note(session: orm.Session, event: hooks.NoteEvent) -> str:
    if session.scalar(
        sa.select(CommandNote.id).where(CommandNote.note_id == event.note_id)
    ):
        return "duplicate"
    ws = _row(session, event.project_id, event.mr_iid)
    if ws is None:
        # A comment on an MR opened before the bot was set up: track it now; the
        # next resync fills in what the note does not say (title, draft...).
        ws = lifecycle.new_workspace(
            lifecycle.MergeRequestFacts(
                project_id=event.project_id,
                mr_iid=event.mr_iid,
                project_path=event.project_path,
                project_http_url=event.project_http_url,
                mr_url=f"{event.project_web_url}/-/merge_requests/{event.mr_iid}",
                title="",
                state=event.mr_state,
                head_sha=event.head_sha,
                draft=False,
                is_fork=event.is_fork,
                source_branch="",
                updated_at=None,
            )
        )
        session.add(ws)
        session.flush()
    session.add(
        CommandNote(
            workspace_id=ws.id,
            note_id=event.note_id,
            discussion_id=event.discussion_id,
            author_id=event.author_id,
            author_username=event.author_username,
            body=event.body,
            head_sha=event.head_sha,
            created_at=utcnow(),
        )
    )
    ws.due_at = utcnow()
    return "queued"


def facts_from_event(event: hooks.MergeRequestEvent) -> lifecycle.MergeRequestFacts:
    return lifecycle.MergeRequestFacts(
        project_id=event.project_id,
        mr_iid=event.mr_iid,
        project_path=event.project_path,
        project_http_url=event.project_http_url,
        mr_url=event.url,
        title=event.title,
        state=event.state,
        head_sha=event.head_sha,
        draft=event.draft,
        is_fork=event.is_fork,
        source_branch=event.source_branch,
        updated_at=event.updated_at,
        author_id=event.author_id,
    )
