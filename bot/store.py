"""The durable store: webhook deliveries and the desired state of each workspace.

The bot is level-triggered. A webhook only records the delivery and updates the
row of its merge request (what the workspace *should* be); the reconciler later
converges the runtime and the MR comment to that row. Everything the reconciler
needs to resume after a crash lives here, so ``kill -9`` at any point loses
nothing: an acknowledged delivery has been committed, and a half-done reconcile
pass is simply done again once its claim expires.

Claims are plain conditional ``UPDATE`` statements (compare-and-set on
``claimed_until``), which behave the same on SQLite and PostgreSQL, so several
workers in several processes can share one database without double work.

The schema is created and upgraded by Alembic (``bot/migrations``); the models
below are what the migrations build.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, orm
from sqlalchemy.exc import DBAPIError

from bot.errors import TemporaryError

log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(orm.DeclarativeBase):
    pass


class Delivery(Base):
    """One webhook delivery, kept so that a redelivery is recognised."""

    __tablename__ = "deliveries"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    key: orm.Mapped[str] = orm.mapped_column(sa.String(200), unique=True)
    event: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    received_at: orm.Mapped[dt.datetime] = orm.mapped_column(index=True)
    project_id: orm.Mapped[int | None]
    mr_iid: orm.Mapped[int | None]
    #: applied | unchanged | ignored | queued | done
    outcome: orm.Mapped[str] = orm.mapped_column(sa.String(32))
    #: The payload, for events whose work happens later (comments with commands).
    body: orm.Mapped[str | None] = orm.mapped_column(sa.Text)


class Workspace(Base):
    """The workspace of one merge request: what it should be and what it is."""

    __tablename__ = "workspaces"
    __table_args__ = (sa.UniqueConstraint("project_id", "mr_iid"),)

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    project_id: orm.Mapped[int]
    mr_iid: orm.Mapped[int]
    project_path: orm.Mapped[str] = orm.mapped_column(sa.String(512))
    project_http_url: orm.Mapped[str] = orm.mapped_column(sa.String(1024))
    mr_url: orm.Mapped[str] = orm.mapped_column(sa.String(1024), default="")
    title: orm.Mapped[str] = orm.mapped_column(sa.Text, default="")
    #: GitLab's MR state: opened, closed, merged, locked.
    mr_state: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    is_fork: orm.Mapped[bool] = orm.mapped_column(default=False)
    draft: orm.Mapped[bool] = orm.mapped_column(default=False)
    source_branch: orm.Mapped[str] = orm.mapped_column(sa.String(512), default="")
    #: The MR head as GitLab last told us.
    head_sha: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    #: The commit checked out in the running workspace.
    running_sha: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    #: For fork MRs: the head commit a Developer approved to run.
    approved_sha: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    #: running | stopped | gone — what the workspace should be.
    desired: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    #: What the reconciler last saw; see ``bot.lifecycle.Phase``.
    phase: orm.Mapped[str] = orm.mapped_column(sa.String(24), default="pending")
    reason: orm.Mapped[str] = orm.mapped_column(sa.Text, default="")
    #: Incarnation: bumped when a fresh workspace must replace the old one.
    generation: orm.Mapped[int] = orm.mapped_column(default=1)
    #: The MR's author, who may run some commands without the role they need.
    author_id: orm.Mapped[int | None]
    #: When the workspace stops if nobody uses it, and when it is destroyed.
    stop_at: orm.Mapped[dt.datetime | None]
    expires_at: orm.Mapped[dt.datetime | None]
    #: When its lifetime began (expiry first set); ``extend`` is capped from it.
    started_at: orm.Mapped[dt.datetime | None]
    #: The GitLab environment whose URL is the join page, and the commit of its
    #: latest deployment (what the MR widget's "View app" follows).
    environment_id: orm.Mapped[int | None]
    deployed_sha: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    #: Notes about the running workspace for the comment, one per line.
    notices: orm.Mapped[str] = orm.mapped_column(sa.Text, default="")
    #: Set by ``/workspace restart``; the reconciler restarts and clears it.
    restart: orm.Mapped[bool] = orm.mapped_column(default=False)
    note_id: orm.Mapped[int | None]
    note_digest: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    mr_updated_at: orm.Mapped[dt.datetime | None]
    #: Bumped by every change from outside the reconciler (events, resync).
    version: orm.Mapped[int] = orm.mapped_column(default=1)
    #: When the reconciler should look at this row next; NULL when settled.
    due_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(index=True)
    attempts: orm.Mapped[int] = orm.mapped_column(default=0)
    claimed_by: orm.Mapped[str | None] = orm.mapped_column(sa.String(128))
    claimed_until: orm.Mapped[dt.datetime | None]
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(default=utcnow)
    updated_at: orm.Mapped[dt.datetime] = orm.mapped_column(
        default=utcnow, onupdate=utcnow
    )


class Member(Base):
    """Someone who joined a workspace, and the Linux account they got."""

    __tablename__ = "members"
    __table_args__ = (sa.UniqueConstraint("workspace_id", "gitlab_user_id"),)

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    workspace_id: orm.Mapped[int] = orm.mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    gitlab_user_id: orm.Mapped[int]
    username: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    linux_name: orm.Mapped[str] = orm.mapped_column(sa.String(32))
    #: read | write
    role: orm.Mapped[str] = orm.mapped_column(sa.String(8))
    #: The workspace generation the account was created in.
    generation: orm.Mapped[int]
    locked: orm.Mapped[bool] = orm.mapped_column(default=False)
    first_joined_at: orm.Mapped[dt.datetime] = orm.mapped_column(default=utcnow)
    last_joined_at: orm.Mapped[dt.datetime] = orm.mapped_column(default=utcnow)
    #: Refreshed while a terminal is open; a member counts as connected while
    #: it is recent (a crashed web process cannot leave someone "connected").
    last_seen_at: orm.Mapped[dt.datetime | None]
    connected: orm.Mapped[int] = orm.mapped_column(default=0)


class CommandNote(Base):
    """An MR comment holding commands, queued until the reconciler runs them.

    ``done`` counts the commands already carried out; a command's effect, its
    answer and ``done`` are committed together, so a worker killed half-way
    through a comment resumes at the next command instead of repeating one, and
    answers are posted afterwards (each carrying a marker, so none twice).
    """

    __tablename__ = "command_notes"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    workspace_id: orm.Mapped[int] = orm.mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    note_id: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, unique=True)
    discussion_id: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    author_id: orm.Mapped[int]
    author_username: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    body: orm.Mapped[str] = orm.mapped_column(sa.Text)
    #: The MR head when the comment was written: what a fork approval approves.
    head_sha: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    done: orm.Mapped[int] = orm.mapped_column(default=0)
    #: JSON list of the answers decided so far; ``posted`` of them are on GitLab.
    replies: orm.Mapped[str] = orm.mapped_column(sa.Text, default="[]")
    posted: orm.Mapped[int] = orm.mapped_column(default=0)
    acked: orm.Mapped[bool] = orm.mapped_column(default=False)
    finished: orm.Mapped[bool] = orm.mapped_column(default=False, index=True)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(default=utcnow)


class Grant(Base):
    """A role given by ``/workspace invite`` or taken by ``revoke`` ("none")."""

    __tablename__ = "grants"
    __table_args__ = (sa.UniqueConstraint("workspace_id", "gitlab_user_id"),)

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    workspace_id: orm.Mapped[int] = orm.mapped_column(
        sa.ForeignKey("workspaces.id", ondelete="CASCADE")
    )
    gitlab_user_id: orm.Mapped[int]
    username: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    role: orm.Mapped[str] = orm.mapped_column(sa.String(8))
    granted_by: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(default=utcnow)


class AuditEntry(Base):
    """Who did what to which workspace, and how it went."""

    __tablename__ = "audit"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    at: orm.Mapped[dt.datetime] = orm.mapped_column(default=utcnow, index=True)
    project_id: orm.Mapped[int]
    mr_iid: orm.Mapped[int]
    actor: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    action: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    detail: orm.Mapped[str] = orm.mapped_column(sa.Text, default="")
    #: ok | refused | failed
    outcome: orm.Mapped[str] = orm.mapped_column(sa.String(16))


class RedeemedTicket(Base):
    """An endpoint ticket already used (see :mod:`bot.endpoints`), kept until it
    has expired anyway; the primary key is what makes a ticket single-use
    across web replicas."""

    __tablename__ = "redeemed_tickets"

    id: orm.Mapped[str] = orm.mapped_column(sa.String(64), primary_key=True)
    expires_at: orm.Mapped[dt.datetime] = orm.mapped_column(index=True)


class Store:
    """Owns the engine and hands out sessions; one per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs = {"connect_args": {"timeout": 30, "check_same_thread": False}}
        self.engine = sa.create_engine(url, **kwargs)
        # SQLite allows one writer at a time and makes the others sleep and
        # poll, which turns a busy moment into long stalls. Threads of one
        # process take turns on this lock instead. (Several processes on one
        # SQLite file still poll: installs with several replicas use PostgreSQL.)
        self._turn: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
            self._turn = threading.RLock()
        self._sessions = orm.sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[orm.Session]:
        """A transaction: committed on success, rolled back on error.

        Lost connections (PostgreSQL restarted) become :class:`TemporaryError`,
        so callers retry instead of crashing.
        """
        with self._turn, self._sessions() as session:
            try:
                yield session
                session.commit()
            except DBAPIError as err:
                session.rollback()
                if err.connection_invalidated or isinstance(
                    err, sa.exc.OperationalError
                ):
                    raise TemporaryError("database unavailable") from err
                raise
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A Core connection in a transaction, for the webhook's hot path.

        The same promise as :meth:`session` (committed on success, rolled back
        on error, lost connections become :class:`TemporaryError`) without the
        ORM's session machinery, which cost more per delivery than the SQL
        itself (benchmarks/intake.py). An ``orm.Session(bind=conn)`` opened on
        it joins this transaction instead of committing on its own.
        """
        with self._turn:
            try:
                with self.engine.begin() as conn:
                    yield conn
            except DBAPIError as err:
                if err.connection_invalidated or isinstance(
                    err, sa.exc.OperationalError
                ):
                    raise TemporaryError("database unavailable") from err
                raise

    def redeem_ticket(self, ticket_id: str, expires_at: dt.datetime) -> bool:
        """Record the use of a ticket; False when it was used before, by this
        replica or another.

        The insert alone decides: when two replicas redeem one ticket at the
        same moment, the primary key lets exactly one of them commit, which a
        read before the write could not promise.
        """
        row = {"id": ticket_id, "expires_at": expires_at}
        try:
            with self.transaction() as conn:
                conn.execute(sa.insert(RedeemedTicket).values(row))
        except sa.exc.IntegrityError:
            return False
        return True

    def alembic_config(self) -> Any:
        """Alembic's configuration for ``bot/migrations``; the migrations run on
        the connection put in its ``attributes["connection"]``."""
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option(
            "script_location", str(resources.files("bot") / "migrations")
        )
        return cfg

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent).

        On PostgreSQL an advisory lock makes replicas that start together
        migrate one after the other instead of racing.
        """
        from alembic import command

        cfg = self.alembic_config()
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(72390417)"))
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    def ping(self) -> None:
        """Raise :class:`TemporaryError` unless the store answers and its schema
        is the one this code expects (``rwbot migrate`` has run)."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(self.alembic_config()).get_current_head()
        try:
            with self.engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_revision()
        except DBAPIError as err:
            raise TemporaryError("database unavailable") from err
        if current != head:
            raise TemporaryError(f"database schema is {current}, expected {head}")

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the web process write deliveries while a worker reads; a busy
    # timeout makes concurrent writers wait instead of failing. NORMAL syncs
    # the WAL at checkpoints, not at every commit: an acknowledged delivery
    # survives the bot being killed, not the host losing power (FULL would,
    # at about half the intake throughput; README, "Known gaps").
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def claim(
    session: orm.Session, worker: str, lease: float, limit: int = 10
) -> list[Workspace]:
    """Claim up to ``limit`` due workspaces for ``worker``; return the claimed rows.

    A claim is a conditional update: it succeeds only if nobody holds the row or
    the holder's lease has run out (the holder died), so two workers never work
    on the same merge request at once. A row still held by ``worker`` itself is
    free to it too: a worker claims only between passes, so such a claim is left
    over from a pass whose release failed (the store went away mid-pass), and
    waiting out the lease would only stall that merge request.
    """
    now = utcnow()
    free = sa.or_(
        Workspace.claimed_until.is_(None),
        Workspace.claimed_until < now,
        Workspace.claimed_by == worker,
    )
    ids = session.scalars(
        sa.select(Workspace.id)
        .where(Workspace.due_at <= now, free)
        .order_by(Workspace.due_at)
        .limit(limit)
    ).all()
    claimed = []
    until = now + dt.timedelta(seconds=lease)
    for ws_id in ids:
        result = session.execute(
            sa.update(Workspace)
            .where(Workspace.id == ws_id, free)
            .values(claimed_by=worker, claimed_until=until)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append(ws_id)
    session.commit()
    if not claimed:
        return []
    return list(
        session.scalars(sa.select(Workspace).where(Workspace.id.in_(claimed))).all()
    )


def release(
    session: orm.Session,
    ws: Workspace,
    worker: str,
    seen_version: int,
    due_at: dt.datetime | None,
    **changes: Any,
) -> bool:
    """Save a reconcile pass's results and give the row back.

    ``due_at`` is only written if no event changed the row meanwhile
    (``version`` still equals ``seen_version``); otherwise the row stays due so
    the new desired state is picked up at once. Returns whether the row was
    still ours.
    """
    values = dict(changes, claimed_by=None, claimed_until=None)
    result = session.execute(
        sa.update(Workspace)
        .where(
            Workspace.id == ws.id,
            Workspace.claimed_by == worker,
            Workspace.version == seen_version,
        )
        .values(due_at=due_at, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return True
    # An event arrived during the pass: keep its due_at and what it decided,
    # save the rest (what the runtime and the comment now are).
    for owned in ("desired", "generation", "approved_sha"):
        values.pop(owned, None)
    result = session.execute(
        sa.update(Workspace)
        .where(Workspace.id == ws.id, Workspace.claimed_by == worker)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
