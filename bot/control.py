"""Carrying out ``/workspace`` commands from MR comments.

The reconciler calls :meth:`Control.run_pending` for a workspace it has claimed,
so commands on one merge request run one at a time and in order. For each
comment: an ``eyes`` award at once; then each command is authorised against the
commenter's access level *now*, and its effect on the workspace row, its answer
and the progress counter are committed in one transaction; then the answers are
posted in the comment's thread and a final award says how it went.

Most commands only change what the workspace should be (desired state, fork
approval, generation, timers); the reconciler does the rest on its next pass.
``sync`` acts on the runtime directly, because its answer is its outcome.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy import orm

from bot import audit, commands, comments, grants, lifecycle
from bot.commands import FAILED, OK, REFUSED, Answer, Command, Verb
from bot.devfile import change as devfile_change
from bot.errors import PermanentError
from bot.gitlab import Client
from bot.lifecycle import Desired, Phase
from bot.runtime.base import Runtime, WorkspaceKey
from bot.settings import Settings
from bot.store import CommandNote, Member, Store, Workspace, utcnow

log = logging.getLogger(__name__)


class Control:
    def __init__(
        self, settings: Settings, store: Store, gitlab: Client, runtime: Runtime
    ) -> None:
        self.settings = settings
        self.store = store
        self.gitlab = gitlab
        self.runtime = runtime
        self.grants = grants.Grants(settings, store, gitlab, runtime)
        self.permissions: Mapping[Verb, int] = (
            {Verb(k): v for k, v in settings.command_permissions.items()}
            if settings.command_permissions
            else commands.DEFAULT_PERMISSIONS
        )

    def run_pending(self, workspace_id: int) -> None:
        with self.store.session() as session:
            notes = session.scalars(
                sa.select(CommandNote)
                .where(
                    CommandNote.workspace_id == workspace_id,
                    CommandNote.finished.is_(False),
                )
                .order_by(CommandNote.note_id)
            ).all()
        for note in notes:
            self._run_note(note)

    def _run_note(self, note: CommandNote) -> None:
        if note.author_id == self.settings.bot_user_id:
            # Recorded by a web app that did not know the bot's user yet
            # (GitLab was down when it started). Its text names commands,
            # but it is the bot talking: never run, never answered.
            self._update(note, finished=True)
            log.info("own comment skipped", extra={"note": note.note_id})
            return
        ws = self._workspace(note.workspace_id)
        if not note.acked:
            self.gitlab.award(ws.project_id, ws.mr_iid, note.note_id, "eyes")
            self._update(note, acked=True)

        parsed = commands.parse_comment(note.body, self.settings.command_prefix)
        for index in range(note.done, len(parsed.commands)):
            self._decide(note, index, parsed.commands[index])
        if parsed.ignored and note.done == len(parsed.commands):
            self._add_answer(
                note,
                len(parsed.commands),
                Answer(
                    REFUSED,
                    f"Only the first {commands.MAX_COMMANDS} commands "
                    "of a comment are run.",
                ),
            )
        self._post_answers(note, ws)

    # -- deciding -------------------------------------------------------------

    def _decide(self, note: CommandNote, index: int, command: Command) -> None:
        """Authorise and apply one command; commit effect, answer and progress."""
        ws = self._workspace(note.workspace_id)
        answer = self._authorize(ws, note, command)
        with self.store.session() as session:
            row = session.get(Workspace, ws.id)
            assert row is not None
            if answer is None:
                try:
                    answer = self._apply(session, row, note, command)
                except PermanentError as err:
                    answer = Answer(FAILED, err.reason)
            audit.add(
                session,
                ws.project_id,
                ws.mr_iid,
                note.author_username,
                f"command {command.verb.value}",
                answer.outcome,
                command.line[:200],
            )
            _append(session, note, index + 1, answer)
        log.info(
            "command handled",
            extra={
                "workspace": ws.id,
                "verb": command.verb.value,
                "user": note.author_username,
                "outcome": answer.outcome,
            },
        )

    def _authorize(
        self, ws: Workspace, note: CommandNote, command: Command
    ) -> Answer | None:
        """An answer that refuses the command, or None if it may run."""
        membership = self.gitlab.membership(ws.project_id, note.author_id)
        level = grants.active_level(membership)
        decision = commands.authorize(
            command,
            access_level=level,
            is_author=ws.author_id == note.author_id,
            permissions=self.permissions,
        )
        if not decision.allowed:
            return Answer(REFUSED, decision.reason)
        if command.error:
            return Answer(REFUSED, command.error + "\n\n" + self._help())
        if ws.mr_state in ("merged", "closed") and command.verb not in (
            Verb.HELP,
            Verb.STATUS,
            Verb.WHO,
        ):
            return Answer(
                REFUSED,
                f"The merge request is {ws.mr_state}, so `{command.name}` is not run.",
            )
        if command.verb == Verb.INVITE:
            grant = commands.may_grant(
                command.role or "read",
                level,
                self.settings.read_level,
                self.settings.write_level,
            )
            if not grant.allowed:
                return Answer(REFUSED, grant.reason)
        return None

    def _apply(
        self, session: orm.Session, ws: Workspace, note: CommandNote, command: Command
    ) -> Answer:
        verb = command.verb
        if verb == Verb.HELP:
            return Answer(OK, self._help())
        if verb == Verb.STATUS:
            return Answer(OK, self._status(session, ws))
        if verb == Verb.WHO:
            return Answer(OK, who(session, ws))
        if verb == Verb.START:
            return self._start(ws, note)
        if verb == Verb.STOP:
            _want(ws, Desired.STOPPED)
            return Answer(OK, "Stopping the workspace; its files are kept.")
        if verb == Verb.RESTART:
            if ws.desired == Desired.GONE:
                return Answer(REFUSED, "There is no workspace to restart; use `start`.")
            _want(ws, Desired.RUNNING)
            ws.restart = True
            ws.phase, ws.reason = Phase.PENDING, ""
            return Answer(OK, "Restarting the workspace.")
        if verb == Verb.REBUILD:
            connected = _connected(session, ws)
            if connected and not command.confirm:
                names = ", ".join(f"@{m}" for m in connected)
                return Answer(
                    REFUSED,
                    f"{names} {'is' if len(connected) == 1 else 'are'} connected and "
                    "would lose their changes. Comment "
                    f"`{self.settings.command_prefix} rebuild --confirm` to go ahead.",
                )
            self._fresh(ws)
            return Answer(
                OK,
                "Rebuilding the workspace from the current merge "
                "request head; local changes are discarded.",
            )
        if verb == Verb.DESTROY:
            ws.desired = Desired.GONE
            _touch(ws)
            return Answer(OK, "Destroying the workspace and its data.")
        if verb == Verb.EXTEND:
            return self._extend(ws, command)
        if verb == Verb.INVITE:
            return self.grants.invite(session, ws, note, command)
        if verb == Verb.REVOKE:
            return self.grants.revoke(session, ws, note, command)
        if verb == Verb.SYNC:
            return self._sync(ws)
        return Answer(REFUSED, f"`{command.name}` is not a command.\n\n{self._help()}")

    def _start(self, ws: Workspace, note: CommandNote) -> Answer:
        if ws.is_fork:
            # The approval is bound to the commit the approver saw; code pushed
            # to the fork later does not run until someone approves again.
            if ws.approved_sha and ws.approved_sha != note.head_sha:
                self._fresh(ws)
            ws.approved_sha = note.head_sha
            _want(ws, Desired.RUNNING)
            return Answer(
                OK,
                f"Approved commit `{note.head_sha[:8]}` to run; "
                "starting the workspace.",
            )
        if ws.desired == Desired.GONE:
            self._fresh(ws)
        if ws.draft and not ws.approved_sha:
            ws.approved_sha = note.head_sha  # started on purpose despite the draft
        if ws.phase == Phase.FAILED:
            ws.phase, ws.reason = Phase.PENDING, ""
        _want(ws, Desired.RUNNING)
        ws.stop_at = None
        return Answer(OK, "Starting the workspace.")

    def _fresh(self, ws: Workspace) -> None:
        """A new generation: the reconciler replaces the workspace with a new one."""
        ws.generation += 1
        ws.running_sha = None
        ws.phase, ws.reason = Phase.PENDING, ""
        ws.stop_at = ws.expires_at = ws.started_at = None
        _want(ws, Desired.RUNNING)

    def _extend(self, ws: Workspace, command: Command) -> Answer:
        assert command.duration is not None
        now = utcnow()
        if ws.phase != Phase.READY or ws.expires_at is None or ws.stop_at is None:
            return Answer(
                REFUSED, "The workspace is not running, so there is nothing to extend."
            )

        # The cap counts from when the lifetime began, which an extend never
        # moves. Rows from before ``started_at`` existed reckon it from expiry.
        started = ws.started_at or ws.expires_at - dt.timedelta(
            seconds=self.settings.max_lifetime
        )
        cap = started + dt.timedelta(seconds=self.settings.max_extended_lifetime)
        latest = f"the latest allowed ({_span(self.settings.max_extended_lifetime)} "
        latest += "after it started)"
        wanted = ws.expires_at + command.duration
        expires_at = max(ws.expires_at, min(cap, wanted))
        stop_at = min(expires_at, max(ws.stop_at, now) + command.duration)
        if expires_at <= ws.expires_at and stop_at <= ws.stop_at:
            return Answer(
                REFUSED,
                f"The workspace already expires at {_when(ws.expires_at)}, "
                f"{latest}, so it cannot be extended further.",
            )

        moved = "stays at" if expires_at == ws.expires_at else "moved to"
        capped = f", {latest}" if wanted > expires_at else ""
        ws.expires_at, ws.stop_at = expires_at, stop_at
        _touch(ws)
        return Answer(
            OK,
            f"Idle stop moved to {_when(ws.stop_at)}; expiry {moved} "
            f"{_when(ws.expires_at)}{capped}.",
        )

    def _sync(self, ws: Workspace) -> Answer:
        if ws.phase != Phase.READY or ws.running_sha is None:
            return Answer(REFUSED, "The workspace is not running.")
        if ws.is_fork and ws.approved_sha != ws.head_sha:
            return Answer(
                REFUSED,
                "New commits from a fork need approval first: "
                f"comment `{self.settings.command_prefix} start`.",
            )
        key = WorkspaceKey(ws.project_id, ws.mr_iid)
        checkout = f"{self.settings.workspace_root}/{ws.project_path}"
        source = lifecycle.checkout_source(self.settings, ws, ws.head_sha)
        result = self.runtime.sync(key, source, checkout)
        if result.exit_code != 0:
            return Answer(
                FAILED,
                "The new commits could not be brought in without "
                "touching local changes, so nothing was changed:\n\n"
                f"```\n{result.output.decode(errors='replace')[-1500:]}\n```",
            )
        before, ws.running_sha = ws.running_sha, ws.head_sha
        _comment_due(ws)
        text = f"The checkout is now at `{ws.head_sha[:8]}`."
        if self._devfile_changed(key, checkout, before, ws.head_sha):
            text += (
                "\n\nThe devfile changed, but the workspace keeps the image, "
                "limits and volumes it started with: comment "
                f"`{self.settings.command_prefix} rebuild` to apply it."
            )
        return Answer(OK, text)

    def _devfile_changed(
        self, key: WorkspaceKey, checkout: str, before: str, after: str
    ) -> bool:
        """Whether the devfile the bot would pick differs between two commits
        that the checkout holds; ``False`` when git cannot tell."""
        listings = []
        for sha in (before, after):
            argv = ["git", "-C", checkout, "ls-tree", "-z", sha, "--"]
            result = self.runtime.exec(key, [*argv, *devfile_change.LS_TREE_PATHS])
            if result.exit_code != 0:
                log.warning(
                    "devfile comparison failed",
                    extra={"workspace": key.slug(), "exit_code": result.exit_code},
                )
                return False
            listings.append(
                devfile_change.blobs(result.output.decode(errors="replace"))
            )

        return devfile_change.changed(*listings)

    def _status(self, session: orm.Session, ws: Workspace) -> str:
        lines = [
            f"**State:** {ws.phase}" + (f" ({ws.reason})" if ws.reason else ""),
            f"**Commit:** `{(ws.running_sha or ws.head_sha)[:8]}`",
        ]
        if ws.stop_at:
            lines.append(f"**Stops when idle at:** {_when(ws.stop_at)}")
        if ws.expires_at:
            lines.append(f"**Expires at:** {_when(ws.expires_at)}")
        links, _ = comments.endpoint_links(
            ws, self.settings.public_url, self.settings.endpoints_domain
        )
        if links and ws.phase == Phase.READY:
            shown = ", ".join(f"[{name}]({url})" for name, url in links)
            lines.append(f"**Endpoints:** {shown}")
        lines.append("**Who:** " + who(session, ws))
        entries = audit.latest(self.store, ws.project_id, ws.mr_iid, limit=5)
        if entries:
            lines.append(
                "**Latest actions:**\n"
                + "\n".join(
                    f"- {e.at:%Y-%m-%d %H:%M}Z @{e.actor} {e.action} ({e.outcome})"
                    for e in entries
                )
            )
        return "\n\n".join(lines)

    def _help(self) -> str:
        return commands.help_text(
            self.settings.command_prefix, permissions=self.permissions
        )

    # -- answering ------------------------------------------------------------

    def _add_answer(self, note: CommandNote, done: int, answer: Answer) -> None:
        with self.store.session() as session:
            _append(session, note, done, answer)

    def _post_answers(self, note: CommandNote, ws: Workspace) -> None:
        answers = json.loads(note.replies)
        first = note.posted
        for index in range(first, len(answers)):
            _outcome, text = answers[index]
            marker = f"<!-- review-workspace-bot:reply:{note.note_id}:{index} -->"
            # Only the first answer not recorded as posted may have been posted
            # by a worker that died before recording it: its marker tells.
            posted = index == first and self.gitlab.replied(
                ws.project_id,
                ws.mr_iid,
                note.discussion_id,
                marker,
                self.settings.bot_user_id,
            )
            if not posted:
                self.gitlab.reply(
                    ws.project_id, ws.mr_iid, note.discussion_id, f"{text}\n\n{marker}"
                )
            self._update(note, posted=index + 1)
        failed = any(outcome != OK for outcome, _ in answers)
        self.gitlab.award(
            ws.project_id,
            ws.mr_iid,
            note.note_id,
            "x" if failed else "white_check_mark",
        )
        self._update(note, finished=True)

    # -- store helpers --------------------------------------------------------

    def _workspace(self, workspace_id: int) -> Workspace:
        with self.store.session() as session:
            ws = session.get(Workspace, workspace_id)
        assert ws is not None
        return ws

    def _update(self, note: CommandNote, **values: object) -> None:
        with self.store.session() as session:
            session.execute(
                sa.update(CommandNote).where(CommandNote.id == note.id).values(**values)
            )
        for name, value in values.items():
            setattr(note, name, value)


def who(session: orm.Session, ws: Workspace) -> str:
    members = session.scalars(
        sa.select(Member)
        .where(Member.workspace_id == ws.id, Member.generation == ws.generation)
        .order_by(Member.first_joined_at)
    ).all()
    if not members:
        return "nobody has joined yet."
    now = utcnow()
    parts = []
    for m in members:
        if m.locked:
            state = "access revoked"
        elif _is_connected(m, now):
            state = "connected now"
        else:
            state = f"last seen {_when(m.last_seen_at or m.last_joined_at)}"
        parts.append(f"@{m.username} ({m.role}, {state})")
    return ", ".join(parts)


def _is_connected(member: Member, now: dt.datetime) -> bool:
    return bool(
        member.connected > 0
        and member.last_seen_at is not None
        and now - member.last_seen_at < dt.timedelta(seconds=90)
    )


def _connected(session: orm.Session, ws: Workspace) -> list[str]:
    now = utcnow()
    return [
        m.username
        for m in session.scalars(
            sa.select(Member).where(
                Member.workspace_id == ws.id, Member.locked.is_(False)
            )
        )
        if _is_connected(m, now)
    ]


def _append(session: orm.Session, note: CommandNote, done: int, answer: Answer) -> None:
    replies = [*json.loads(note.replies), [answer.outcome, answer.text]]
    note.replies, note.done = json.dumps(replies), done
    session.execute(
        sa.update(CommandNote)
        .where(CommandNote.id == note.id)
        .values(replies=note.replies, done=done)
    )


def _want(ws: Workspace, desired: Desired) -> None:
    ws.desired = desired
    _touch(ws)


def _touch(ws: Workspace) -> None:
    """The row changed from outside the reconciler: converge it again."""
    ws.version += 1
    ws.due_at = utcnow()


def _comment_due(ws: Workspace) -> None:
    ws.due_at = utcnow()


def _when(value: dt.datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else "—"


def _span(seconds: float) -> str:
    """A configured duration in the largest whole unit: "30 days", "90 minutes"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    count = int(seconds)
    return f"{count} second{'s' if count != 1 else ''}"
