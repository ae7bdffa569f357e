"""Joining a workspace: check access, then make the person a Linux user in it.

Called on every join and every terminal connection, not only the first:
access is re-read from GitLab each time, so someone removed from the project, or
blocked, is refused (and their account locked) the next time they try, and a
changed role is applied before a shell starts. :func:`access` is the one
decision behind the join page, the terminal socket and the resync's sweep. The
in-workspace tool (``bot/workspace/rwctl.sh``) does the work inside the
container; this module decides what to ask of it and records the outcome.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import sqlalchemy as sa

from bot import accounts, audit
from bot.errors import PermanentError, TemporaryError
from bot.gitlab import Client
from bot.lifecycle import Phase
from bot.runtime.base import ExecResult, Runtime, WorkspaceKey
from bot.settings import Settings
from bot.store import Grant, Member, Store, Workspace, utcnow

log = logging.getLogger(__name__)


class Refusal(enum.Enum):
    NO_WORKSPACE = 404
    NOT_READY = 409
    FORBIDDEN = 403


class Refused(PermanentError):
    """The person may not join; ``reason`` says why and what to do."""

    def __init__(self, reason: str, kind: Refusal) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class Person:
    """Who signed in, as GitLab told us at sign-in."""

    id: int
    username: str
    name: str
    email: str


@dataclass(frozen=True)
class Joined:
    key: WorkspaceKey
    linux_name: str
    role: accounts.Role
    checkout: str


def role_for(access_level: int, settings: Settings) -> accounts.Role | None:
    """The role an access level gives, or None if it gives none."""
    if access_level >= settings.write_level:
        return accounts.Role.WRITE
    if access_level >= settings.read_level:
        return accounts.Role.READ
    return None


def join(
    settings: Settings,
    store: Store,
    gitlab: Client,
    runtime: Runtime,
    person: Person,
    key: WorkspaceKey,
) -> Joined:
    ws = workspace(store, key)
    role = check_access(settings, store, gitlab, runtime, person, ws)

    name = _provision(settings, store, gitlab, runtime, person, ws, role)
    seen(settings, store, ws, person.id)
    audit.record(
        store,
        key.project_id,
        key.mr_iid,
        person.username,
        "join",
        "ok",
        f"as {name}, {role.value}",
    )
    log.info(
        "user joined",
        extra={"workspace": key.slug(), "user": person.username, "role": role.value},
    )
    return Joined(key, name, role, f"{settings.workspace_root}/{ws.project_path}")


def connect(
    settings: Settings,
    store: Store,
    gitlab: Client,
    runtime: Runtime,
    person: Person,
    key: WorkspaceKey,
) -> Joined:
    """Check access again for a terminal connection, and follow a changed role.

    The account must exist already (the join link made it). When the role
    differs from the one the account was given (the level was lowered or
    raised, or an invite set it), the account is provisioned again with it,
    and the in-workspace tool ends the person's running shells if their rights
    shrank, since those still carry the write group.
    """
    ws = workspace(store, key)
    role = check_access(settings, store, gitlab, runtime, person, ws)
    with store.session() as session:
        member = session.scalars(
            sa.select(Member).where(
                Member.workspace_id == ws.id,
                Member.gitlab_user_id == person.id,
                Member.generation == ws.generation,
                Member.locked.is_(False),
            )
        ).one_or_none()
    if member is None:
        raise PermanentError("Open the join link first.")

    name = member.linux_name
    if member.role != role.value:
        name = _provision(settings, store, gitlab, runtime, person, ws, role)
        audit.record(
            store,
            key.project_id,
            key.mr_iid,
            person.username,
            "role changed",
            "ok",
            f"{member.role} to {role.value}",
        )
        log.info(
            "role changed",
            extra={
                "workspace": key.slug(),
                "user": person.username,
                "role": role.value,
            },
        )
    return Joined(key, name, role, f"{settings.workspace_root}/{ws.project_path}")


def _provision(
    settings: Settings,
    store: Store,
    gitlab: Client,
    runtime: Runtime,
    person: Person,
    ws: Workspace,
    role: accounts.Role,
) -> str:
    """Create or update the person's account with ``role``; its Linux name."""
    key = WorkspaceKey(ws.project_id, ws.mr_iid)
    keys = accounts.usable_keys(gitlab.ssh_keys(person.id, utcnow()))
    # Someone renamed on GitLab keeps the account (and uid) they already have.
    name = member_name(store, ws, person.id, locked_too=True) or accounts.linux_name(
        person.username, person.id
    )
    uid = runtime.uid_policy
    result = runtime.exec(key, _adduser(settings, ws, person, role, name, keys, uid))
    if accounts.name_refused(result.exit_code, result.output.decode(errors="replace")):
        # The image already has an account of that name: use the fallback,
        # which contains the GitLab id and so cannot belong to anyone else.
        name = accounts.fallback_name(person.id)
        result = runtime.exec(
            key, _adduser(settings, ws, person, role, name, keys, uid)
        )
    if result.exit_code != 0:
        log.error(
            "provisioning failed",
            extra={
                "workspace": key.slug(),
                "user": person.username,
                "exit_code": result.exit_code,
                "output": result.output.decode(errors="replace")[-300:],
            },
        )
        raise PermanentError("Setting up your account in the workspace failed.")

    _remember(store, ws, person, name, role)
    return name


def check_access(
    settings: Settings,
    store: Store,
    gitlab: Client,
    runtime: Runtime,
    person: Person,
    ws: Workspace,
) -> accounts.Role:
    """The person's role now; refuse (and lock a former member) if they have none."""
    if ws.phase != Phase.READY:
        raise Refused(
            f"The workspace for !{ws.mr_iid} is {ws.phase.replace('-', ' ')}, "
            "so it cannot be joined right now.",
            Refusal.NOT_READY,
        )
    decided = access(settings, store, gitlab, ws, person.id)
    if isinstance(decided, Refused):
        try:
            lock(store, runtime, ws, person.id)
        except TemporaryError as err:
            # Refused all the same; the access sweep locks them later.
            log.warning("lock failed", extra={"workspace": ws.id, "error": str(err)})
        raise decided
    return decided


def access(
    settings: Settings, store: Store, gitlab: Client, ws: Workspace, user_id: int
) -> accounts.Role | Refused:
    """The one access decision behind joins, terminal connections and the sweep.

    The effective membership (``members/all``, inherited ones included) must be
    active; an ``invite`` then sets the role whatever the level gives (a Guest
    may be invited), a ``revoke`` takes it away; otherwise the level decides.
    Reads GitLab and the store, changes nothing.
    """
    membership = gitlab.membership(ws.project_id, user_id)
    if membership is not None and membership.state != "active":
        return Refused("Your GitLab account is not active.", Refusal.FORBIDDEN)
    if membership is not None:
        granted = _grant(store, ws, user_id)
        if granted == "none":
            return Refused(
                "Your access to this workspace was revoked by a maintainer of the "
                "project or the merge request's author.",
                Refusal.FORBIDDEN,
            )
        if granted is not None:
            return accounts.Role(granted)
        role = role_for(membership.access_level, settings)
        if role is not None:
            return role
    return Refused(
        f"You need at least the Reporter role on {ws.project_path} to join its "
        "review workspaces. Ask a maintainer of the project to add you.",
        Refusal.FORBIDDEN,
    )


def _grant(store: Store, ws: Workspace, user_id: int) -> str | None:
    """The role an ``invite`` gave (or "none" after ``revoke``), if any."""
    with store.session() as session:
        return session.scalar(
            sa.select(Grant.role).where(
                Grant.workspace_id == ws.id, Grant.gitlab_user_id == user_id
            )
        )


def seen(
    settings: Settings, store: Store, ws: Workspace, user_id: int, connected: int = 0
) -> None:
    """Record activity: a join, an open terminal (``connected`` +1 on open, -1
    on close, 0 for a heartbeat). Activity pushes the idle stop back."""
    now = utcnow()
    with store.session() as session:
        session.execute(
            sa.update(Member)
            .where(Member.workspace_id == ws.id, Member.gitlab_user_id == user_id)
            .values(
                last_seen_at=now,
                connected=sa.case(
                    (Member.connected + connected < 0, 0),
                    else_=Member.connected + connected,
                ),
            )
        )
        row = session.get(Workspace, ws.id)
        if row is not None and row.stop_at is not None:
            idle = dt.timedelta(seconds=settings.idle_timeout)
            row.stop_at = max(row.stop_at, now + idle)


def anyone_connected(store: Store, ws: Workspace) -> bool:
    recent = utcnow() - dt.timedelta(seconds=90)
    with store.session() as session:
        return bool(
            session.scalar(
                sa.select(sa.func.count())
                .select_from(Member)
                .where(
                    Member.workspace_id == ws.id,
                    Member.connected > 0,
                    Member.last_seen_at >= recent,
                    Member.locked.is_(False),
                )
            )
        )


def lock(store: Store, runtime: Runtime, ws: Workspace, user_id: int) -> None:
    """Lock the account of a former member and end their processes."""
    with store.session() as session:
        member = session.scalars(
            sa.select(Member).where(
                Member.workspace_id == ws.id, Member.gitlab_user_id == user_id
            )
        ).one_or_none()
        if member is None or member.locked:
            return
        name = member.linux_name
    if not lock_account(runtime, ws, name):
        # Not recorded as locked, so the next sweep tries again.
        audit.record(store, ws.project_id, ws.mr_iid, name, "lock", "failed")
        raise TemporaryError(f"locking {name} failed")
    with store.session() as session:
        session.execute(
            sa.update(Member).where(Member.id == member.id).values(locked=True)
        )
        _comment_due(session, ws.id)
    log.info("access revoked", extra={"workspace": ws.id, "linux_name": name})
    audit.record(store, ws.project_id, ws.mr_iid, name, "lock", "ok")


def lock_account(runtime: Runtime, ws: Workspace, linux_name: str) -> bool:
    """Lock an account and end its processes; whether that worked. An
    account the workspace does not have (a fresh one) counts as locked."""
    key = WorkspaceKey(ws.project_id, ws.mr_iid)
    try:
        result = runtime.exec(key, accounts.lock_argv(linux_name))
    except PermanentError as err:  # it stopped under us
        result = ExecResult(-1, err.reason.encode())
    if result.exit_code in (accounts.EXIT_OK, accounts.EXIT_REFUSED):
        return True
    log.warning(
        "account lock failed",
        extra={
            "workspace": key.slug(),
            "linux_name": linux_name,
            "exit_code": result.exit_code,
            "output": result.output.decode(errors="replace")[-300:],
        },
    )

    return False


def member_name(
    store: Store, ws: Workspace, user_id: int, *, locked_too: bool = False
) -> str | None:
    """The Linux account of a member who joined this generation, if any
    (including a locked one with ``locked_too``: a rejoin reuses it)."""
    query = sa.select(Member.linux_name).where(
        Member.workspace_id == ws.id,
        Member.gitlab_user_id == user_id,
        Member.generation == ws.generation,
    )
    if not locked_too:
        query = query.where(Member.locked.is_(False))
    with store.session() as session:
        return session.scalar(query)


def members(store: Store, ws: Workspace) -> list[Member]:
    with store.session() as session:
        return list(
            session.scalars(
                sa.select(Member)
                .where(
                    Member.workspace_id == ws.id,
                    Member.generation == ws.generation,
                    Member.locked.is_(False),
                )
                .order_by(Member.first_joined_at)
            )
        )


def workspace(store: Store, key: WorkspaceKey) -> Workspace:
    with store.session() as session:
        ws = session.scalars(
            sa.select(Workspace).where(
                Workspace.project_id == key.project_id, Workspace.mr_iid == key.mr_iid
            )
        ).one_or_none()
    if ws is None:
        raise Refused(
            "There is no review workspace for this merge request.", Refusal.NO_WORKSPACE
        )
    return ws


def _adduser(
    settings: Settings,
    ws: Workspace,
    person: Person,
    role: accounts.Role,
    name: str,
    keys: list[str],
    uid: accounts.UidPolicy,
) -> list[str]:
    host = urlsplit(settings.gitlab_url).hostname or "gitlab"
    info = {
        "id": person.id,
        "username": person.username,
        "name": person.name,
        "commit_email": person.email,
    }
    return accounts.adduser_argv(
        name=name,
        gitlab_user_id=person.id,
        gitlab_username=person.username,
        role=role,
        git_name=accounts.git_name(info),
        git_email=accounts.git_email(info, host),
        keys=keys,
        uid=uid,
    )


def _remember(
    store: Store, ws: Workspace, person: Person, name: str, role: accounts.Role
) -> None:
    with store.session() as session:
        member = session.scalars(
            sa.select(Member).where(
                Member.workspace_id == ws.id, Member.gitlab_user_id == person.id
            )
        ).one_or_none()
        if member is None:
            member = Member(
                workspace_id=ws.id,
                gitlab_user_id=person.id,
                generation=ws.generation,
                first_joined_at=utcnow(),
            )
            session.add(member)
            changed = True
        else:
            changed = (
                member.role != role.value
                or member.locked
                or member.generation != ws.generation
            )
        member.username = person.username
        member.linux_name = name
        member.role = role.value
        member.generation = ws.generation
        member.locked = False
        member.last_joined_at = utcnow()
        if changed:
            _comment_due(session, ws.id)


def _comment_due(session: sa.orm.Session, workspace_id: int) -> None:
    """Ask the reconciler to re-render the MR comment (who joined changed)."""
    session.execute(
        sa.update(Workspace).where(Workspace.id == workspace_id).values(due_at=utcnow())
    )
