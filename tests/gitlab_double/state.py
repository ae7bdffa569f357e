"""The double's in-memory GitLab: records, id counters, a clock and one lock.

Handlers and the test API both work on one :class:`Store`. Every read or write of
its collections happens under ``store.lock`` (re-entrant, so a test-API method can
call helpers that lock again). Git repositories live on disk and are reached
through ``store.repos``; refs are the truth for commits, the records only cache
the shas GitLab would report.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.gitlab_double.repos import Repos

# docs.gitlab.com/api/members/#roles
GUEST, REPORTER, DEVELOPER, MAINTAINER, OWNER = 10, 20, 30, 40, 50

# Webhook payloads carry the numeric state id next to the name.
STATE_IDS = {"opened": 1, "closed": 2, "merged": 3, "locked": 4}


@dataclass
class User:
    id: int
    username: str
    name: str
    email: str
    public_email: str | None
    commit_email: str | None
    state: str
    bot: bool
    created_at: datetime
    keys: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Project:
    id: int
    path_with_namespace: str
    default_branch: str
    visibility: str
    created_at: datetime
    next_iid: int = 1

    @property
    def name(self) -> str:
        return self.path_with_namespace.rsplit("/", 1)[-1]

    @property
    def namespace_path(self) -> str:
        return self.path_with_namespace.rsplit("/", 1)[0]


@dataclass
class Member:
    access_level: int
    expires_at: str | None
    created_at: datetime


@dataclass
class MergeRequest:
    id: int
    iid: int
    project_id: int
    source_project_id: int
    title: str
    description: str
    author_id: int
    source_branch: str
    target_branch: str
    sha: str
    base_sha: str
    start_sha: str
    created_at: datetime
    updated_at: datetime
    draft: bool = False
    state: str = "opened"
    merged_at: datetime | None = None
    merged_by_id: int | None = None
    closed_at: datetime | None = None
    closed_by_id: int | None = None
    merge_commit_sha: str | None = None
    # What the last test-API mutation changed, for the next Merge Request Hook:
    # ``oldrev`` only after a push, ``changes`` as {attr: {previous, current}}.
    oldrev: str | None = None
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Note:
    id: int
    project_id: int
    mr_iid: int
    noteable_id: int
    author_id: int
    body: str
    system: bool
    discussion_id: str
    type: str | None
    internal: bool
    created_at: datetime
    updated_at: datetime


@dataclass
class Discussion:
    id: str
    project_id: int
    mr_iid: int
    individual_note: bool
    note_ids: list[int] = field(default_factory=list)


@dataclass
class AwardEmoji:
    id: int
    note_id: int
    name: str
    user_id: int
    created_at: datetime


@dataclass
class Hook:
    id: int
    project_id: int
    url: str
    token: str | None
    signing_token: str | None
    settings: dict[str, Any]
    created_at: datetime
    #: ``executable``, ``temporarily_disabled`` or ``disabled``: GitLab stops
    #: delivering to a hook that keeps failing (docs: "auto-disabled webhooks").
    alert_status: str = "executable"
    disabled_until: datetime | None = None


@dataclass
class Environment:
    id: int
    project_id: int
    name: str
    slug: str
    external_url: str | None
    tier: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    state: str = "available"


@dataclass
class Deployment:
    id: int
    iid: int
    project_id: int
    environment_id: int
    ref: str
    sha: str
    tag: bool
    status: str
    user_id: int
    created_at: datetime
    updated_at: datetime


@dataclass
class OAuthApp:
    client_id: str
    secret: str
    redirect_uris: list[str]
    scopes: list[str]
    confidential: bool
    #: Refuse an authorization request without an S256 ``code_challenge``.
    pkce_required: bool = False


@dataclass
class OAuthGrant:
    code: str
    client_id: str
    user_id: int
    redirect_uri: str
    scopes: list[str]
    challenge: str | None
    challenge_method: str | None
    nonce: str | None
    expires_at: datetime
    used: bool = False


@dataclass
class AccessToken:
    """A credential for the API and git: the bot's token or an OAuth token."""

    token: str
    user_id: int
    scopes: list[str]
    created_at: datetime
    client_id: str | None = None
    expires_at: datetime | None = None
    refresh_token: str | None = None
    revoked: bool = False
    #: Personal access tokens have an id and a name (OAuth tokens show neither).
    id: int = 0
    name: str = ""


class Store:
    """All of the double's state; lock ``store.lock`` around every access."""

    def __init__(self, root: str) -> None:
        self.lock = threading.RLock()
        self.repos = Repos(root)
        self.url = ""
        self._offset = timedelta(0)
        self._ids = itertools.count(1)

        self.users: dict[int, User] = {}
        self.projects: dict[int, Project] = {}
        self.members: dict[tuple[int, int], Member] = {}
        self.mrs: dict[tuple[int, int], MergeRequest] = {}
        self.notes: dict[int, Note] = {}
        # The same notes by MR, in order: shaping an MR counts its notes,
        # which must not mean reading every note of every MR.
        self._mr_notes: dict[tuple[int, int], dict[int, Note]] = {}
        self.discussions: dict[str, Discussion] = {}
        self.emojis: dict[int, AwardEmoji] = {}
        self.hooks: dict[int, Hook] = {}
        self.environments: dict[int, Environment] = {}
        self.deployments: dict[int, Deployment] = {}
        self.apps: dict[str, OAuthApp] = {}
        self.grants: dict[str, OAuthGrant] = {}
        self.tokens: dict[str, AccessToken] = {}
        self.signed_in_user_id: int | None = None
        # Set by the double: move MR heads after a git push over HTTP.
        self.after_push: Callable[[Project], None] = lambda project: None

    def next_id(self) -> int:
        """One counter for every kind of record: ids never collide across kinds.

        GitLab's ids are per table, but nothing the bot does may depend on that,
        and distinct ids catch a note id passed where an MR id belongs.
        """
        return next(self._ids)

    def now(self) -> datetime:
        """Wall-clock UTC plus whatever a test advanced it by."""
        return datetime.now(UTC).replace(microsecond=0) + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += timedelta(seconds=seconds)

    def issue_token(
        self,
        user_id: int,
        scopes: list[str],
        *,
        client_id: str | None = None,
        lifetime: int | None = None,
    ) -> AccessToken:
        now = self.now()
        token = AccessToken(
            token=secrets.token_hex(32),
            user_id=user_id,
            scopes=scopes,
            created_at=now,
            client_id=client_id,
            expires_at=now + timedelta(seconds=lifetime) if lifetime else None,
            refresh_token=secrets.token_hex(32) if client_id else None,
            # Own numbering, so issuing a token shifts no other record's id.
            id=len(self.tokens) + 1,
            name="" if client_id else f"token-{len(self.tokens) + 1}",
        )
        self.tokens[token.token] = token
        return token

    def project_by_ref(self, ref: int | str) -> Project | None:
        """Find a project by numeric id or by its ``path_with_namespace``."""
        if isinstance(ref, int) or str(ref).isdigit():
            return self.projects.get(int(ref))
        for project in self.projects.values():
            if project.path_with_namespace == ref:
                return project
        return None

    def access_level(self, project: Project, user: User) -> int:
        """Effective membership level, 0 when the user is not a member."""
        member = self.members.get((project.id, user.id))
        return member.access_level if member else 0

    def mr_notes(self, mr: MergeRequest) -> list[Note]:
        return list(self._mr_notes.get((mr.project_id, mr.iid), {}).values())

    def add_note(
        self,
        mr: MergeRequest,
        author_id: int,
        body: str,
        *,
        system: bool = False,
        discussion: Discussion | None = None,
        thread: bool = False,
        internal: bool = False,
    ) -> Note:
        """Add a note to ``mr``, in ``discussion`` or in a new one.

        A plain comment gets its own single-note discussion (``individual_note``);
        ``thread=True`` starts a resolvable thread instead. Replying to an
        individual note turns it into a thread, as GitLab does.
        """
        if discussion is None:
            discussion = Discussion(
                id=secrets.token_hex(20),
                project_id=mr.project_id,
                mr_iid=mr.iid,
                individual_note=not thread,
            )
            self.discussions[discussion.id] = discussion
        elif discussion.individual_note:
            discussion.individual_note = False
            for earlier in discussion.note_ids:
                self.notes[earlier].type = "DiscussionNote"

        now = self.now()
        note = Note(
            id=self.next_id(),
            project_id=mr.project_id,
            mr_iid=mr.iid,
            noteable_id=mr.id,
            author_id=author_id,
            body=body,
            system=system,
            discussion_id=discussion.id,
            type=None if discussion.individual_note else "DiscussionNote",
            internal=internal,
            created_at=now,
            updated_at=now,
        )
        self.notes[note.id] = note
        self._mr_notes.setdefault((mr.project_id, mr.iid), {})[note.id] = note
        discussion.note_ids.append(note.id)

        return note

    def delete_note(self, note: Note) -> None:
        del self.notes[note.id]
        del self._mr_notes[(note.project_id, note.mr_iid)][note.id]
        discussion = self.discussions[note.discussion_id]
        discussion.note_ids.remove(note.id)
        if not discussion.note_ids:
            del self.discussions[discussion.id]
        for emoji_id in [e.id for e in self.emojis.values() if e.note_id == note.id]:
            del self.emojis[emoji_id]


def api_time(value: datetime | None) -> str | None:
    """REST API timestamps: ISO 8601 with milliseconds, ``2024-05-01T10:00:00.000Z``."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.000Z") if value else None


def hook_time(value: datetime | None) -> str | None:
    """Merge Request Hook timestamps as documented: ``2013-12-03T17:23:34Z``."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def hook_utc(value: datetime | None) -> str | None:
    """Note Hook timestamps as documented: ``2015-05-17 18:21:36 UTC``."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else None
