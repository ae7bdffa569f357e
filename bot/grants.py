"""Invite and revoke: a role other than what a member's level gives.

``invite @user read|write`` and ``revoke @user`` are stored as a :class:`Grant`
row per person and workspace, which every access decision reads
(:func:`bot.provision.access`). A revoke also ends the person's sessions by
locking their account; when the workspace is not running, or the lock fails,
the reconciler locks it on its next pass that finds the workspace ready
(:meth:`Grants.lock_revoked`). Nobody takes away more than they could have
given (:func:`bot.commands.may_revoke`).
"""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa
from sqlalchemy import orm

from bot import audit, commands, provision
from bot.commands import FAILED, OK, REFUSED, Answer, Command
from bot.errors import TemporaryError
from bot.gitlab import Client, Membership
from bot.lifecycle import Phase
from bot.runtime.base import Runtime
from bot.settings import Settings
from bot.store import CommandNote, Grant, Member, Store, Workspace, utcnow


@dataclasses.dataclass
class Grants:
    settings: Settings
    store: Store
    gitlab: Client
    runtime: Runtime

    def invite(
        self, session: orm.Session, ws: Workspace, note: CommandNote, command: Command
    ) -> Answer:
        assert command.target is not None
        user_id = self.gitlab.user_id(command.target)
        member = (
            self.gitlab.membership(ws.project_id, user_id)
            if user_id is not None
            else None
        )
        if user_id is None or member is None or member.state != "active":
            return Answer(
                REFUSED,
                f"@{command.target} is not a member of this "
                "project; only members can be invited.",
            )
        set_grant(
            session,
            ws,
            user_id,
            command.target,
            command.role or "read",
            note.author_username,
        )
        ws.due_at = utcnow()  # the comment shows who may join
        return Answer(
            OK,
            f"@{command.target} may now join with {command.role} "
            "access (applies at their next join).",
        )

    def revoke(
        self, session: orm.Session, ws: Workspace, note: CommandNote, command: Command
    ) -> Answer:
        assert command.target is not None
        target = f"@{command.target}"
        user_id = self.gitlab.user_id(command.target)
        if user_id is None:
            return Answer(REFUSED, f"There is no user {target}.")
        refusal = self._may_revoke(session, ws, note, user_id, target)
        if refusal is not None:
            return refusal

        set_grant(session, ws, user_id, command.target, "none", note.author_username)
        ws.due_at = utcnow()  # the comment shows who may join
        member = session.scalars(
            sa.select(Member).where(
                Member.workspace_id == ws.id,
                Member.gitlab_user_id == user_id,
                Member.generation == ws.generation,
            )
        ).one_or_none()
        gone = f"{target} can no longer join"
        if member is None:
            return Answer(OK, f"{gone}; they had not joined, so no session was ended.")
        if member.locked:
            return Answer(OK, f"{gone}; their account was already locked.")
        if ws.phase != Phase.READY:
            # The Grant row refuses them at every join; the reconciler locks
            # the account once the workspace runs again (lock_revoked).
            return Answer(
                OK,
                f"{gone}. The workspace is not running, so nobody is connected; "
                "their account will be locked when it next starts.",
            )
        if not provision.lock_account(self.runtime, ws, member.linux_name):
            return Answer(
                FAILED,
                f"{gone}, but locking their account in the workspace failed, so "
                "a session they have open may go on; the bot keeps trying.",
            )
        member.locked, member.connected = True, 0
        return Answer(
            OK, f"{gone}; their sessions were ended and their account locked."
        )

    def _may_revoke(
        self,
        session: orm.Session,
        ws: Workspace,
        note: CommandNote,
        user_id: int,
        target: str,
    ) -> Answer | None:
        """A refusal if the target's access is more than the commenter could
        have given them: an author who is a Reporter locks out no Maintainer."""
        commenter = self.gitlab.membership(ws.project_id, note.author_id)
        member = self.gitlab.membership(ws.project_id, user_id)
        commenter_level = active_level(commenter)
        target_level = active_level(member)
        granted = session.scalar(
            sa.select(Grant.role).where(
                Grant.workspace_id == ws.id, Grant.gitlab_user_id == user_id
            )
        )
        role: str | None = granted if granted != "none" else None
        if role is None and target_level is not None:
            by_level = provision.role_for(target_level, self.settings)
            role = by_level.value if by_level is not None else None
        decision = commands.may_revoke(
            target,
            target_level,
            role,
            commenter_level,
            self.settings.read_level,
            self.settings.write_level,
        )
        return None if decision.allowed else Answer(REFUSED, decision.reason)

    def lock_revoked(self, ws: Workspace) -> None:
        """Lock the accounts of people revoked while the workspace was not
        running, or whose lock failed. The reconciler calls this on every pass
        that finds the workspace ready; a lock that fails again raises
        :class:`TemporaryError`, so the pass is retried with backoff."""
        with self.store.session() as session:
            pending = session.execute(
                sa.select(Member.id, Member.linux_name)
                .join(
                    Grant,
                    sa.and_(
                        Grant.workspace_id == Member.workspace_id,
                        Grant.gitlab_user_id == Member.gitlab_user_id,
                    ),
                )
                .where(
                    Member.workspace_id == ws.id,
                    Member.generation == ws.generation,
                    Member.locked.is_(False),
                    Grant.role == "none",
                )
            ).all()
        failed = []
        for member_id, linux_name in pending:
            if not provision.lock_account(self.runtime, ws, linux_name):
                failed.append(linux_name)
                continue
            with self.store.session() as session:
                session.execute(
                    sa.update(Member)
                    .where(Member.id == member_id)
                    .values(locked=True, connected=0)
                )
                audit.add(
                    session,
                    ws.project_id,
                    ws.mr_iid,
                    audit.BOT,
                    "lock",
                    OK,
                    f"{linux_name}: access revoked",
                )
        if failed:
            raise TemporaryError(f"locking revoked accounts failed: {len(failed)}")


def active_level(membership: Membership | None) -> int | None:
    """The access level of an active member; None for anyone else."""
    if membership is None or membership.state != "active":
        return None
    return membership.access_level


def set_grant(
    session: orm.Session,
    ws: Workspace,
    user_id: int,
    username: str,
    role: str,
    by: str,
) -> None:
    grant = session.scalars(
        sa.select(Grant).where(
            Grant.workspace_id == ws.id, Grant.gitlab_user_id == user_id
        )
    ).one_or_none()
    if grant is None:
        grant = Grant(workspace_id=ws.id, gitlab_user_id=user_id)
        session.add(grant)
    grant.username, grant.role, grant.granted_by = username, role, by
    grant.created_at = utcnow()
