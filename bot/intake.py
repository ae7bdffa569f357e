"""Recording a verified webhook delivery, in one short transaction.

The delivery row (unique by its key) and the merge request's desired state are
written together, so an acknowledged delivery has always taken effect and a
redelivery of the same event changes nothing. Nothing slow happens here: the
reconciler does the work later.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from bot import hooks, lifecycle
from bot.settings import Settings
from bot.store import Delivery, Store, Workspace, utcnow

log = logging.getLogger(__name__)


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
    with store.session() as session:
        if session.scalar(sa.select(Delivery.id).where(Delivery.key == key)):
            return "duplicate"
        outcome, project_id, mr_iid = _apply(session, settings, event)
        session.add(
            Delivery(
                key=key,
                event=event_name[:64],
                received_at=utcnow(),
                project_id=project_id,
                mr_iid=mr_iid,
                outcome=outcome,
            )
        )
    return outcome


def _apply(
    session: sa.orm.Session, settings: Settings, event: hooks.Event
) -> tuple[str, int | None, int | None]:
    if isinstance(event, hooks.Ignored):
        return "ignored", None, None
    if isinstance(event, hooks.NoteEvent):
        # Comment commands are handled elsewhere; the bot's own notes never are.
        return "ignored", event.project_id, event.mr_iid

    facts = facts_from_event(event)
    ws = session.scalars(
        sa.select(Workspace).where(
            Workspace.project_id == facts.project_id, Workspace.mr_iid == facts.mr_iid
        )
    ).one_or_none()
    if ws is None:
        session.add(lifecycle.new_workspace(facts))
        session.flush()
        return "applied", facts.project_id, facts.mr_iid
    changed = lifecycle.observe(ws, facts)
    return ("applied" if changed else "unchanged"), facts.project_id, facts.mr_iid


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
    )
