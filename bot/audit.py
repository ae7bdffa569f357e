"""The audit log: every command, join, revocation and lifecycle action.

Entries are written in the same transaction as the change they describe where
there is one, so the log and the state cannot disagree. ``rwbot audit`` prints
them; ``/workspace status`` shows the latest few.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import orm

from bot.store import AuditEntry, Store, utcnow

#: The actor of what the bot does by itself: idle stop, expiry, start, removal.
BOT = "bot"


@dataclass(frozen=True)
class Entry:
    at: dt.datetime
    project_id: int
    mr_iid: int
    actor: str
    action: str
    detail: str
    outcome: str

    def line(self) -> str:
        when = self.at.strftime("%Y-%m-%d %H:%M:%S")
        where = f"{self.project_id}!{self.mr_iid}"
        return (
            f"{when}Z {where} {self.actor} {self.action} {self.outcome} {self.detail}"
        )


def add(
    session: orm.Session,
    project_id: int,
    mr_iid: int,
    actor: str,
    action: str,
    outcome: str,
    detail: str = "",
) -> None:
    session.add(
        AuditEntry(
            at=utcnow(),
            project_id=project_id,
            mr_iid=mr_iid,
            actor=actor[:255],
            action=action[:64],
            detail=detail[:2000],
            outcome=outcome,
        )
    )


def record(store: Store, *args: object, **kwargs: object) -> None:
    """:func:`add` in a transaction of its own."""
    with store.session() as session:
        add(session, *args, **kwargs)  # type: ignore[arg-type]


def latest(
    store: Store,
    project_id: int | None = None,
    mr_iid: int | None = None,
    limit: int = 50,
) -> list[Entry]:
    """Newest first."""
    query = sa.select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if project_id is not None:
        query = query.where(AuditEntry.project_id == project_id)
    if mr_iid is not None:
        query = query.where(AuditEntry.mr_iid == mr_iid)
    with store.session() as session:
        return [
            Entry(e.at, e.project_id, e.mr_iid, e.actor, e.action, e.detail, e.outcome)
            for e in session.scalars(query)
        ]
