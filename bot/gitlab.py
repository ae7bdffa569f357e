"""The one place the bot talks to GitLab's REST API, through python-gitlab.

Every call goes through :meth:`Client._call`, which turns library errors into the
bot's own: rate limits (429), server errors (5xx) and unreachable hosts become
:class:`TemporaryError` carrying GitLab's ``Retry-After``; a bad token becomes
:class:`ConfigError`. python-gitlab's own sleeping retries are switched off so
that a rate-limited merge request is rescheduled by the reconciler instead of
blocking a worker thread, and other work is not held up behind it.

python-gitlab's exceptions do not keep response headers, so a ``requests``
response hook remembers the last ``Retry-After`` seen by this thread.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import gitlab
import gitlab.exceptions
import gitlab.v4.objects
import requests

from bot.errors import ConfigError, PermanentError, TemporaryError
from bot.hooks import parse_time
from bot.lifecycle import MergeRequestFacts
from bot.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


class NotFound(PermanentError):
    """GitLab answered 404: the object is gone or the bot cannot see it."""


@dataclass(frozen=True)
class User:
    id: int
    username: str
    name: str


@dataclass(frozen=True)
class Project:
    id: int
    path: str
    http_url: str
    web_url: str


@dataclass(frozen=True)
class CloneToken:
    """A project deploy token that may only read the repository; git takes
    ``username`` and ``token`` as HTTP Basic credentials."""

    id: int
    username: str
    token: str = field(repr=False)


@dataclass(frozen=True)
class Membership:
    """A user's effective membership of a project (inherited ones included)."""

    access_level: int
    state: str


@dataclass(frozen=True)
class Hook:
    id: int
    created: bool


@dataclass(frozen=True)
class RegisteredHook:
    """A project webhook as GitLab reports it (secrets are never shown)."""

    id: int
    url: str
    #: The ``HOOK_EVENTS`` flags as GitLab has them.
    flags: dict[str, bool]
    #: ``executable``, or why GitLab stopped delivering (``temporarily_disabled``).
    alert_status: str


HOOK_EVENTS = {
    "merge_requests_events": True,
    "note_events": True,
    "push_events": False,
    "issues_events": False,
    "tag_push_events": False,
    "pipeline_events": False,
    "job_events": False,
    "wiki_page_events": False,
    "deployment_events": False,
    "releases_events": False,
    "confidential_note_events": False,
    "enable_ssl_verification": True,
}


class Client:
    """A GitLab API client acting as the bot's own user."""

    def __init__(self, settings: Settings, *, timeout: float = 10.0) -> None:
        self._local = threading.local()
        session = requests.Session()
        session.hooks["response"].append(self._remember_retry_after)
        self._gl = gitlab.Gitlab(
            settings.gitlab_url,
            private_token=settings.gitlab_token,
            timeout=timeout,
            session=session,
            retry_transient_errors=False,
            user_agent="review-workspace-bot",
        )
        self._http_url = settings.gitlab_url

    def _remember_retry_after(
        self, response: requests.Response, *_args: Any, **_kwargs: Any
    ) -> None:
        self._local.retry_after = response.headers.get("Retry-After")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        self._local.retry_after = None
        try:
            # max_retries=0 and obey_rate_limit=False are passed per call below;
            # here we only translate the outcome.
            return fn()
        except gitlab.exceptions.GitlabAuthenticationError as err:
            raise ConfigError(f"GitLab rejected the bot's token ({what})") from err
        except gitlab.exceptions.GitlabError as err:
            code = err.response_code or 0
            if code == 429 or code >= 500:
                raise TemporaryError(
                    f"GitLab answered {code} to {what}",
                    retry_after=_seconds(self._local.retry_after),
                ) from err
            if code == 404:
                raise NotFound(f"{what}: not found") from err
            if code == 403:
                raise ConfigError(f"the bot's token may not {what}") from err
            raise PermanentError(f"GitLab refused to {what} ({code})") from err
        except requests.RequestException as err:
            raise TemporaryError(f"GitLab unreachable ({what})") from err

    # Options that make python-gitlab fail fast and leave retries to us.
    _fast: ClassVar[dict[str, Any]] = {"obey_rate_limit": False, "max_retries": 0}

    def whoami(self) -> User:
        def call() -> User:
            # Not self._gl.auth(): it cannot be told to fail fast on a 429.
            user = gitlab.v4.objects.CurrentUserManager(self._gl).get(**self._fast)
            return User(user.id, user.username, user.name)

        return self._call("read its own user", call)

    def ping(self) -> None:
        # Not python-gitlab's version(): it hides errors behind "unknown".
        self._call("answer /user", lambda: self._gl.http_get("/user", **self._fast))

    def project(self, project: int | str) -> Project:
        def call() -> Project:
            p = self._gl.projects.get(project, **self._fast)
            return Project(p.id, p.path_with_namespace, p.http_url_to_repo, p.web_url)

        return self._call(f"read project {project}", call)

    def merge_request(self, project: Project, iid: int) -> MergeRequestFacts:
        def call() -> MergeRequestFacts:
            p = self._gl.projects.get(project.id, lazy=True)
            return _facts(project, p.mergerequests.get(iid, **self._fast))

        return self._call(f"read merge request !{iid}", call)

    def open_merge_requests(self, project: Project) -> list[MergeRequestFacts]:
        def call() -> list[MergeRequestFacts]:
            p = self._gl.projects.get(project.id, lazy=True)
            mrs = p.mergerequests.list(
                state="opened", iterator=True, per_page=100, **self._fast
            )
            return [_facts(project, mr) for mr in mrs]

        return self._call(f"list open merge requests of {project.path}", call)

    def find_note(
        self, project_id: int, iid: int, marker: str, author_id: int | None
    ) -> int | None:
        """The id of the bot's note containing ``marker``, looking at every page."""

        def call() -> int | None:
            mr = self._mr(project_id, iid)
            notes = mr.notes.list(
                iterator=True,
                per_page=100,
                sort="asc",
                order_by="created_at",
                **self._fast,
            )
            for note in notes:
                if marker in (note.body or "") and (
                    author_id is None or note.author["id"] == author_id
                ):
                    return int(note.id)
            return None

        return self._call(f"list notes of !{iid}", call)

    def create_note(self, project_id: int, iid: int, body: str) -> int:
        def call() -> int:
            note = self._mr(project_id, iid).notes.create({"body": body}, **self._fast)
            return int(note.id)

        return self._call(f"comment on !{iid}", call)

    def edit_note(self, project_id: int, iid: int, note_id: int, body: str) -> None:
        def call() -> None:
            notes = self._mr(project_id, iid).notes
            notes.update(note_id, {"body": body}, **self._fast)

        self._call(f"edit note {note_id} on !{iid}", call)

    def award(self, project_id: int, iid: int, note_id: int, emoji: str) -> None:
        """Put an award emoji on a note; one already there counts as done."""

        def call() -> None:
            note = self._mr(project_id, iid).notes.get(note_id, lazy=True)
            try:
                note.awardemojis.create({"name": emoji}, **self._fast)
            except gitlab.exceptions.GitlabCreateError as err:
                # GitLab refuses a second identical award (404 "has already
                # been taken" on some versions, 409/400 on others).
                if err.response_code not in (400, 404, 409):
                    raise

        self._call(f"award {emoji} on note {note_id}", call)

    def reply(
        self, project_id: int, iid: int, discussion_id: str | None, body: str
    ) -> int:
        """Answer in the comment's thread (or on the MR if there is no thread)."""

        def call() -> int:
            mr = self._mr(project_id, iid)
            if discussion_id:
                discussion = mr.discussions.get(discussion_id, lazy=True)
                note = discussion.notes.create({"body": body}, **self._fast)
            else:
                note = mr.notes.create({"body": body}, **self._fast)
            return int(note.id)

        return self._call(f"reply on !{iid}", call)

    def replied(
        self,
        project_id: int,
        iid: int,
        discussion_id: str | None,
        marker: str,
        author_id: int | None,
    ) -> bool:
        """Whether the thread already holds a reply of ours carrying ``marker``.

        Only notes by ``author_id`` (the bot's user, when known) count: anyone
        can paste the marker into the thread, and that must not silence the bot.
        """

        def call() -> bool:
            mr = self._mr(project_id, iid)
            if discussion_id:
                discussion = mr.discussions.get(discussion_id, **self._fast)
                notes = [
                    (n["body"], n["author"]["id"])
                    for n in discussion.attributes.get("notes", [])
                ]
            else:
                listed = mr.notes.list(iterator=True, per_page=100, **self._fast)
                notes = [(n.body, n.author["id"]) for n in listed]
            return any(
                marker in (body or "") and author_id in (None, author)
                for body, author in notes
            )

        return self._call(f"read the thread on !{iid}", call)

    def user_id(self, username: str) -> int | None:
        """The id of the user called ``username``, if there is one."""

        def call() -> int | None:
            users = self._gl.users.list(username=username, **self._fast)
            return int(users[0].id) if users else None

        return self._call(f"look up user {username}", call)

    def ensure_environment(self, project_id: int, name: str, url: str) -> int:
        """The environment called ``name`` with ``url`` as its external URL,
        created (or made available again) if needed; returns its id."""

        def call() -> int:
            p = self._gl.projects.get(project_id, lazy=True)
            for env in p.environments.list(name=name, iterator=True, **self._fast):
                if env.name == name:
                    if getattr(env, "external_url", None) != url:
                        p.environments.update(
                            env.id, {"external_url": url}, **self._fast
                        )
                    return int(env.id)
            env = p.environments.create(
                {"name": name, "external_url": url, "tier": "development"}, **self._fast
            )
            return int(env.id)

        return self._call(f"manage environment {name}", call)

    def deploy(self, project_id: int, environment: str, sha: str, ref: str) -> None:
        """Record a successful deployment of ``sha``: the MR widget then offers
        "View app" while ``sha`` is the MR's head."""

        def call() -> None:
            p = self._gl.projects.get(project_id, lazy=True)
            try:
                p.deployments.create(
                    {
                        "environment": environment,
                        "sha": sha,
                        "ref": ref,
                        "tag": False,
                        "status": "success",
                    },
                    **self._fast,
                )
            except gitlab.exceptions.GitlabCreateError as err:
                if err.response_code != 400:
                    raise
                # GitLab says which field it refused ("ref": the branch or tag
                # does not exist); the operator needs that, not just "400".
                raise PermanentError(
                    f"GitLab refused the deployment of {sha[:12]} at {ref}: "
                    f"{err.error_message}"
                ) from err

        self._call(f"record a deployment to {environment}", call)

    def stop_environment(self, project_id: int, environment_id: int) -> None:
        def call() -> None:
            p = self._gl.projects.get(project_id, lazy=True)
            try:
                p.environments.get(environment_id, lazy=True).stop(**self._fast)
            except gitlab.exceptions.GitlabStopError as err:
                if err.response_code != 404:
                    raise

        self._call(f"stop environment {environment_id}", call)

    def membership(self, project_id: int, user_id: int) -> Membership | None:
        """The user's effective access to the project; None if not a member.

        ``members/all`` includes inherited and invited-group memberships, which
        is what GitLab itself uses to decide what someone may do.
        """

        def call() -> Membership | None:
            p = self._gl.projects.get(project_id, lazy=True)
            try:
                m = p.members_all.get(user_id, **self._fast)
            except gitlab.exceptions.GitlabGetError as err:
                if err.response_code == 404:
                    return None
                raise
            return Membership(int(m.access_level), str(getattr(m, "state", "active")))

        return self._call(f"read membership of user {user_id}", call)

    def ssh_keys(self, user_id: int, now: dt.datetime) -> list[str]:
        """The user's SSH keys that may authenticate and have not expired."""

        def call() -> list[str]:
            user = self._gl.users.get(user_id, lazy=True)
            keys = []
            for k in user.keys.list(iterator=True, **self._fast):
                if getattr(k, "usage_type", "auth") == "signing":
                    continue
                expires = parse_time(getattr(k, "expires_at", None))
                if expires is not None and expires <= now:
                    continue
                keys.append(str(k.key).strip())
            return keys

        return self._call(f"list SSH keys of user {user_id}", call)

    def install_hook(
        self, project: Project, url: str, secret: str, signing_secret: str | None
    ) -> Hook:
        """Create the bot's webhook on ``project``, or update the one at ``url``."""

        def call() -> Hook:
            p = self._gl.projects.get(project.id, lazy=True)
            attrs: dict[str, Any] = {"url": url, "token": secret, **HOOK_EVENTS}
            if signing_secret:
                attrs["signing_token"] = signing_secret
            for hook in p.hooks.list(iterator=True, **self._fast):
                if hook.url == url:
                    p.hooks.update(hook.id, attrs, **self._fast)
                    return Hook(int(hook.id), created=False)
            hook = p.hooks.create(attrs, **self._fast)
            return Hook(int(hook.id), created=True)

        return self._call(f"manage webhooks of {project.path}", call)

    def hooks(self, project: Project) -> list[RegisteredHook]:
        """The project's webhooks; reading them needs Maintainer, like managing."""

        def call() -> list[RegisteredHook]:
            p = self._gl.projects.get(project.id, lazy=True)
            return [
                RegisteredHook(
                    int(h.id),
                    str(h.url),
                    {k: bool(getattr(h, k, False)) for k in HOOK_EVENTS},
                    str(getattr(h, "alert_status", None) or "executable"),
                )
                for h in p.hooks.list(iterator=True, **self._fast)
            ]

        return self._call(f"read webhooks of {project.path}", call)

    def token_scopes(self) -> list[str]:
        """The scopes of the bot's token (docs.gitlab.com/api/personal_access_tokens,
        "Using a request header"); answers for project and group tokens too."""

        def call() -> list[str]:
            info = self._gl.http_get("/personal_access_tokens/self", **self._fast)
            scopes = info.get("scopes", []) if isinstance(info, dict) else []
            return [str(scope) for scope in scopes]

        return self._call("read its own token", call)

    def create_clone_token(
        self, project: int | str, name: str, expires_at: dt.datetime
    ) -> CloneToken:
        """A deploy token of the project, ``read_repository`` only, that expires
        at ``expires_at`` (docs.gitlab.com/api/deploy_tokens). GitLab lets only
        Maintainers make them; without that role the answer says so, and no
        other credential is offered in its place."""

        def call() -> CloneToken:
            p = self._gl.projects.get(project, lazy=True)
            try:
                made = p.deploytokens.create(
                    {
                        "name": name,
                        "scopes": ["read_repository"],
                        "expires_at": expires_at.isoformat(),
                    },
                    **self._fast,
                )
            except gitlab.exceptions.GitlabCreateError as err:
                if err.response_code != 403:
                    raise
                raise PermanentError(
                    "The bot's GitLab token needs the Maintainer role on this "
                    "project to give the workspace a read-only clone token "
                    "(a project deploy token)."
                ) from err
            return CloneToken(int(made.id), str(made.username), str(made.token))

        return self._call(f"create a clone token for project {project}", call)

    def revoke_clone_token(self, project: int | str, token_id: int) -> None:
        """Delete the deploy token; one already gone is fine."""

        def call() -> None:
            p = self._gl.projects.get(project, lazy=True)
            try:
                p.deploytokens.delete(token_id, **self._fast)
            except gitlab.exceptions.GitlabDeleteError as err:
                if err.response_code != 404:
                    raise

        self._call(f"revoke clone token {token_id} of project {project}", call)

    def clone_token_ids(self, project: int | str, name: str) -> list[int]:
        """The ids of the project's deploy tokens called ``name`` that are not
        revoked yet, expired ones included, from every page. GitLab cannot
        filter the list by name (docs.gitlab.com/api/deploy_tokens, "List
        project deploy tokens"); a project it does not know holds none."""

        def call() -> list[int]:
            p = self._gl.projects.get(project, lazy=True)
            try:
                listed = p.deploytokens.list(iterator=True, per_page=100, **self._fast)
            except gitlab.exceptions.GitlabListError as err:
                if err.response_code != 404:
                    raise
                return []
            return [
                int(t.id)
                for t in listed
                if t.name == name and not getattr(t, "revoked", False)
            ]

        return self._call(f"list clone tokens of project {project}", call)

    def _mr(self, project_id: int, iid: int) -> Any:
        return self._gl.projects.get(project_id, lazy=True).mergerequests.get(
            iid, lazy=True
        )


def _facts(project: Project, mr: Any) -> MergeRequestFacts:
    return MergeRequestFacts(
        project_id=project.id,
        mr_iid=int(mr.iid),
        project_path=project.path,
        project_http_url=project.http_url,
        mr_url=str(mr.web_url),
        title=str(mr.title),
        state=str(mr.state),
        head_sha=str(mr.sha),
        draft=bool(
            getattr(mr, "draft", False) or getattr(mr, "work_in_progress", False)
        ),
        is_fork=int(mr.source_project_id) != int(mr.target_project_id),
        source_branch=str(mr.source_branch),
        updated_at=parse_time(getattr(mr, "updated_at", None)),
        author_id=int(mr.author["id"]) if getattr(mr, "author", None) else None,
    )


def _seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: it is either a number of seconds or
    an HTTP-date (RFC 9110, section 10.2.3); None if absent or unreadable."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, said to be of unknown origin
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())
