"""The :class:`GitLabDouble`: server lifecycle plus the API tests drive it with.

Tests arrange GitLab's side of a story with plain method calls (users,
projects, members, merge requests, pushes, comments), build the webhook GitLab
would send for it, deliver that webhook, and afterwards assert on
:attr:`GitLabDouble.requests_log`. Records are handed out as the dicts the REST
API would return; methods that take a user, project, MR or note accept that
dict, its id, or (users, projects) its username or path.

The request log keeps the decoded path (``/api/v4/projects/team/app`` for
``team%2Fapp``), the query, the JSON or form body with secrets redacted, the
status, and the username the credentials resolved to; never a header.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import secrets
import tempfile
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import requests
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

# Imported for their side effect: each registers its REST routes.
from tests.gitlab_double import (  # noqa: F401
    hooks,
    merge_requests,
    oauth,
    rest_admin,
    rest_core,
    rest_notes,
    shapes,
)
from tests.gitlab_double.api import api
from tests.gitlab_double.git_http import git_http
from tests.gitlab_double.recording import Fault, RecordedRequest, Recorder
from tests.gitlab_double.state import (
    MAINTAINER,
    Member,
    MergeRequest,
    Note,
    OAuthApp,
    Project,
    Store,
    User,
    api_time,
)

logger = logging.getLogger(__name__)

Ref = dict[str, Any] | int | str


class QuietHandler(WSGIRequestHandler):
    """Keep werkzeug's per-request access log out of test output."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def create_app(store: Store, recorder: Recorder) -> Flask:
    app = Flask("gitlab_double")
    app.extensions["gitlab_double"] = store
    app.register_blueprint(api)
    app.register_blueprint(oauth.oauth)
    app.register_blueprint(git_http)
    app.before_request(recorder.check_fault)
    app.after_request(recorder.record)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> tuple[Response, int]:
        code = err.code or 500
        return jsonify({"error": f"{code} {err.name}"}), code

    @app.errorhandler(Exception)
    def crash(err: Exception) -> tuple[Response, int]:
        logger.exception("gitlab double handler failed")
        return jsonify({"message": "500 Internal Server Error"}), 500

    return app


class GitLabDouble:
    """An HTTP server that speaks enough GitLab for the bot's tests."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="gitlab-double-")
        self.store = Store(self._tmp.name)
        self.store.after_push = functools.partial(
            merge_requests.sync_pushed_branches, self.store
        )
        self.recorder = Recorder()
        self.app = create_app(self.store, self.recorder)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

        self.bot_user = self.add_user("review-bot", name="Review Workspace Bot")
        with self.store.lock:
            self.store.users[self.bot_user["id"]].bot = True
            self.token = self.store.issue_token(self.bot_user["id"], ["api"]).token
        self.bot_user = self.user(self.bot_user)

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.store.url:
            raise RuntimeError("the GitLab double is not started")
        return self.store.url

    def start(self, port: int | None = None) -> GitLabDouble:
        """Serve on ``port``, else on the port of the last start (GitLab back
        after an outage keeps its URL), else on a free one."""
        if port is not None:
            self._port = port
        self._server = make_server(
            "127.0.0.1",
            self._port,
            self.app,
            threaded=True,
            request_handler=QuietHandler,
        )
        self._port = self._server.port
        self.store.url = f"http://127.0.0.1:{self._port}"
        # A short poll interval keeps stop() from waiting half a second.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="gitlab-double",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._close_server()
        self._tmp.cleanup()

    def _close_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> GitLabDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_unreachable(self, unreachable: bool = True) -> None:
        """Close the listening socket (connections are refused) or reopen it.

        The port is kept, so clients configured with :attr:`url` reconnect
        once the double is reachable again. For "GitLab answers, but with 503"
        use :meth:`inject_faults` instead.
        """
        if unreachable:
            self._close_server()
        elif self._server is None:
            self.start()

    # -- users, projects, members ---------------------------------------

    def add_user(
        self,
        username: str,
        name: str | None = None,
        email: str | None = None,
        public_email: str | None = None,
        commit_email: str | None = None,
        state: str = "active",
        keys: Iterable[str | dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """Create a user; ``keys`` are SSH public keys (strings, or dicts with
        ``key`` and optional ``title``, ``expires_at``, ``usage_type``)."""
        with self.store.lock:
            now = self.store.now()
            user = User(
                id=self.store.next_id(),
                username=username,
                name=name or username.replace(".", " ").title(),
                email=email or f"{username}@example.com",
                public_email=public_email,
                commit_email=commit_email,
                state=state,
                bot=False,
                created_at=now,
            )
            for key in keys:
                spec = {"key": key} if isinstance(key, str) else dict(key)
                user.keys.append(
                    {
                        "id": self.store.next_id(),
                        "title": spec.get("title", f"{username} key"),
                        "key": spec["key"],
                        "created_at": api_time(now),
                        "expires_at": spec.get("expires_at"),
                        "usage_type": spec.get("usage_type", "auth_and_signing"),
                    }
                )
            self.store.users[user.id] = user
            return shapes.user_public(self.store, user)

    def user(self, ref: Ref) -> dict[str, Any]:
        with self.store.lock:
            return shapes.user_public(self.store, self._user(ref))

    def set_user_state(self, user: Ref, state: str) -> None:
        """``active``, ``blocked``, ``deactivated``: blocked users' tokens stop."""
        with self.store.lock:
            self._user(user).state = state

    def issue_token(self, user: Ref, scopes: Iterable[str] = ("api",)) -> str:
        """A personal access token, for tests that act as another user."""
        with self.store.lock:
            return self.store.issue_token(self._user(user).id, list(scopes)).token

    def add_project(
        self,
        path_with_namespace: str,
        files: dict[str, str] | None = None,
        default_branch: str = "main",
        visibility: str = "private",
        bot_access: int | None = MAINTAINER,
    ) -> dict[str, Any]:
        """A project with a bare repo and one initial commit of ``files``.

        The bot user becomes a member with ``bot_access`` (like a project access
        token's bot user); pass ``None`` to leave it out.
        """
        files = {"README.md": "hello\n"} if files is None else files
        with self.store.lock:
            project = Project(
                id=self.store.next_id(),
                path_with_namespace=path_with_namespace,
                default_branch=default_branch,
                visibility=visibility,
                created_at=self.store.now(),
            )
            repo = self.store.repos.create(path_with_namespace, default_branch)
            self.store.repos.commit(repo, default_branch, dict(files), "Initial commit")
            self.store.projects[project.id] = project
            if bot_access:
                self.set_member(project.id, self.bot_user["id"], bot_access)
            return shapes.project(self.store, project)

    def set_member(
        self, project: Ref, user: Ref, access_level: int, expires_at: str | None = None
    ) -> None:
        with self.store.lock:
            key = (self._project(project).id, self._user(user).id)
            self.store.members[key] = Member(access_level, expires_at, self.store.now())

    def remove_member(self, project: Ref, user: Ref) -> None:
        with self.store.lock:
            key = (self._project(project).id, self._user(user).id)
            self.store.members.pop(key, None)

    def git_url(self, project: Ref) -> str:
        with self.store.lock:
            return f"{self.url}/{self._project(project).path_with_namespace}.git"

    def branch_sha(self, project: Ref, branch: str) -> str | None:
        with self.store.lock:
            path = self._project(project).path_with_namespace
            repo = self.store.repos.path(path)
            return self.store.repos.resolve(repo, f"refs/heads/{branch}")

    # -- merge requests ---------------------------------------------------

    def open_mr(
        self,
        project: Ref,
        source_branch: str,
        files: dict[str, str | None],
        title: str = "Add changes",
        author: Ref | None = None,
        draft: bool = False,
        source_project: Ref | None = None,
        description: str = "",
    ) -> dict[str, Any]:
        """Commit ``files`` on a new branch and open an MR from it.

        ``author`` defaults to the first user added. For a fork MR the branch
        lives in ``source_project`` and its commits are copied into the target
        repo as ``refs/merge-requests/<iid>/head``.
        """
        with self.store.lock:
            target = self._project(project)
            record = merge_requests.open_mr(
                self.store,
                target,
                self._project(source_project) if source_project else target,
                self._user(author) if author is not None else self._first_human(),
                source_branch,
                files,
                title=title,
                description=description,
                draft=draft,
            )
            return shapes.mr(self.store, record)

    def mr(self, mr: Ref) -> dict[str, Any]:
        """The MR as ``GET .../merge_requests/:iid`` returns it now."""
        with self.store.lock:
            return shapes.mr(self.store, self._mr(mr))

    def push(
        self, mr: Ref, files: dict[str, str | None], message: str = "Update files"
    ) -> str:
        """A new commit on the MR's source branch; returns its sha. The next
        ``update`` hook carries the previous head as ``oldrev``."""
        with self.store.lock:
            return merge_requests.push(self.store, self._mr(mr), files, message)

    def merge(self, mr: Ref, actor: Ref | None = None) -> dict[str, Any]:
        """Merge with a merge commit into the target branch."""
        with self.store.lock:
            record = self._mr(mr)
            merge_requests.merge(self.store, record, self._actor(record, actor))
            return shapes.mr(self.store, record)

    def close(self, mr: Ref, actor: Ref | None = None) -> dict[str, Any]:
        return self._set_state(mr, "closed", actor)

    def reopen(self, mr: Ref, actor: Ref | None = None) -> dict[str, Any]:
        return self._set_state(mr, "opened", actor)

    def _set_state(self, mr: Ref, state: str, actor: Ref | None) -> dict[str, Any]:
        with self.store.lock:
            record = self._mr(mr)
            who = self._actor(record, actor)
            merge_requests.set_state(self.store, record, state, who)
            return shapes.mr(self.store, record)

    def set_draft(
        self, mr: Ref, draft: bool, actor: Ref | None = None
    ) -> dict[str, Any]:
        with self.store.lock:
            record = self._mr(mr)
            who = self._actor(record, actor)
            merge_requests.set_draft(self.store, record, draft, who)
            return shapes.mr(self.store, record)

    # -- notes ------------------------------------------------------------

    def add_note(
        self,
        mr: Ref,
        author: Ref,
        body: str,
        system: bool = False,
        internal: bool = False,
        discussion_id: str | None = None,
    ) -> dict[str, Any]:
        """A comment by someone other than the bot; includes ``discussion_id``."""
        with self.store.lock:
            record = self._mr(mr)
            discussion = (
                self.store.discussions[discussion_id] if discussion_id else None
            )
            note = self.store.add_note(
                record,
                self._user(author).id,
                body,
                system=system,
                internal=internal,
                discussion=discussion,
            )
            return self._note_json(note)

    def edit_note(self, note: Ref, body: str) -> dict[str, Any]:
        with self.store.lock:
            record = self._note(note)
            record.body = body
            record.updated_at = self.store.now()
            return self._note_json(record)

    def notes(self, mr: Ref) -> list[dict[str, Any]]:
        """All notes on the MR, oldest first."""
        with self.store.lock:
            found = sorted(self.store.mr_notes(self._mr(mr)), key=lambda n: n.id)
            return [self._note_json(n) for n in found]

    def _note_json(self, note: Note) -> dict[str, Any]:
        return {**shapes.note(self.store, note), "discussion_id": note.discussion_id}

    def award_emoji(self, note: Ref) -> list[dict[str, Any]]:
        with self.store.lock:
            note_id = self._note(note).id
            found = [e for e in self.store.emojis.values() if e.note_id == note_id]
            return [shapes.award_emoji(self.store, e) for e in found]

    # -- webhooks ---------------------------------------------------------

    def mr_hook(self, mr: Ref, action: str, actor: Ref | None = None) -> dict[str, Any]:
        """The Merge Request Hook body for ``action`` (open, update, close,
        reopen, merge, approved, ...) on the MR as it is now."""
        with self.store.lock:
            record = self._mr(mr)
            who = (
                self._user(actor) if actor is not None else self._user(record.author_id)
            )
            return hooks.mr_hook(self.store, record, action, who)

    def note_hook(self, note: Ref, action: str = "create") -> dict[str, Any]:
        with self.store.lock:
            return hooks.note_hook(self.store, self._note(note), action)

    def deliver(
        self,
        target_url: str,
        payload: dict[str, Any],
        *,
        secret: str | None,
        event: str | None = None,
        signing_secret: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """POST ``payload`` like GitLab's webhook worker; see :func:`hooks.deliver`."""
        return hooks.deliver(
            self.url,
            target_url,
            payload,
            secret=secret,
            event=event,
            signing_secret=signing_secret,
            headers=headers,
        )

    def deliver_to_hooks(self, payload: dict[str, Any]) -> list[requests.Response]:
        """Send ``payload`` to every hook of its project subscribed to the event."""
        flag = {
            "merge_request": "merge_requests_events",
            "note": "note_events",
            "emoji": "emoji_events",
            "deployment": "deployment_events",
            "push": "push_events",
        }[payload["object_kind"]]
        with self.store.lock:
            targets = [
                (h.url, h.token, h.signing_token)
                for h in self.store.hooks.values()
                if h.project_id == payload["project"]["id"] and h.settings.get(flag)
            ]
        return [
            self.deliver(url, payload, secret=token, signing_secret=signing)
            for url, token, signing in targets
        ]

    def disable_hooks(self, project: Ref, *, until: datetime | None = None) -> None:
        """What GitLab does to hooks whose deliveries keep failing: it stops
        them for a while (``until``) or for good, and the hooks API says so in
        ``alert_status`` (gitlab-org/gitlab!89322)."""
        with self.store.lock:
            project_id = self._project(project).id
            for hook in self.store.hooks.values():
                if hook.project_id == project_id:
                    hook.alert_status = "temporarily_disabled" if until else "disabled"
                    hook.disabled_until = until
            # TODO: deliver_to_hooks still delivers to a disabled hook — skip
            # disabled hooks there once a test needs GitLab to fall silent.

    def hooks(self, project: Ref) -> list[dict[str, Any]]:
        """The project's hooks including their secrets (the API never shows them)."""
        with self.store.lock:
            project_id = self._project(project).id
            return [
                {**shapes.hook(h), "token": h.token, "signing_token": h.signing_token}
                for h in self.store.hooks.values()
                if h.project_id == project_id
            ]

    def environments(self, project: Ref) -> list[dict[str, Any]]:
        with self.store.lock:
            project_id = self._project(project).id
            return [
                shapes.environment(self.store, e)
                for e in self.store.environments.values()
                if e.project_id == project_id
            ]

    # -- OAuth ------------------------------------------------------------

    def register_oauth_app(
        self,
        redirect_uri: str | Iterable[str],
        scopes: Iterable[str] = ("openid", "read_user"),
        confidential: bool = True,
        pkce_required: bool = False,
    ) -> tuple[str, str]:
        """Register an application; returns ``(client_id, client_secret)``.

        ``pkce_required`` makes the double refuse sign-ins without an S256
        ``code_challenge``, so a test proves the client really sends one.
        """
        uris = [redirect_uri] if isinstance(redirect_uri, str) else list(redirect_uri)
        app = OAuthApp(
            client_id=secrets.token_hex(32),
            secret="gloas-" + secrets.token_hex(32),
            redirect_uris=uris,
            scopes=list(scopes),
            confidential=confidential,
            pkce_required=pkce_required,
        )
        with self.store.lock:
            self.store.apps[app.client_id] = app
        return app.client_id, app.secret

    def login_as(self, user: Ref | None) -> None:
        """Who the browser is signed in at GitLab as; ``None`` signs out."""
        with self.store.lock:
            self.store.signed_in_user_id = self._user(user).id if user else None

    def advance_clock(self, seconds: float) -> None:
        """Move the double's clock forward, e.g. past an OAuth token's expiry."""
        with self.store.lock:
            self.store.advance(seconds)

    # -- request log and faults ---------------------------------------------

    @property
    def requests_log(self) -> list[RecordedRequest]:
        with self.recorder.lock:
            return list(self.recorder.requests)

    def calls(
        self, method: str | None = None, path_regex: str = ""
    ) -> list[RecordedRequest]:
        """Recorded requests with this method whose path matches ``path_regex``."""
        pattern = re.compile(path_regex)
        return [
            r
            for r in self.requests_log
            if (method is None or r.method == method.upper()) and pattern.search(r.path)
        ]

    def clear_log(self) -> None:
        with self.recorder.lock:
            self.recorder.requests.clear()

    def inject_faults(
        self,
        status: int | tuple[int, ...] = 503,
        *,
        rate: float | None = None,
        every: int | None = None,
        retry_after: float | None = None,
        paths: str = r"^/api/v4/",
        times: int | None = None,
        seed: int = 0,
    ) -> None:
        """Answer matching requests with ``status`` instead of serving them.

        Give ``every=N`` (fail the 1st of every N) or ``rate`` (seeded random);
        ``times`` caps the number of failures, after which requests succeed.
        Several statuses take turns; ``retry_after`` goes with 429 and 503.
        """
        if (rate is None) == (every is None):
            raise ValueError("give exactly one of rate= or every=")
        fault = Fault(
            statuses=status if isinstance(status, tuple) else (status,),
            paths=re.compile(paths),
            rate=rate,
            every=every,
            retry_after=retry_after,
            times=times,
            rng=random.Random(seed),
        )
        with self.recorder.lock:
            self.recorder.fault = fault

    def clear_faults(self) -> None:
        with self.recorder.lock:
            self.recorder.fault = None

    # -- lookups ------------------------------------------------------------

    def _user(self, ref: Ref) -> User:
        if isinstance(ref, dict):
            ref = ref["id"]
        if isinstance(ref, int):
            return self.store.users[ref]
        return next(u for u in self.store.users.values() if u.username == ref)

    def _actor(self, record: MergeRequest, actor: Ref | None) -> User:
        """Who did it: ``actor`` if given, else the MR's author."""
        return self._user(actor if actor is not None else record.author_id)

    def _first_human(self) -> User:
        for user in self.store.users.values():
            if not user.bot and user.id != self.bot_user["id"]:
                return user
        raise ValueError("add a user first: an MR needs a human author")

    def _project(self, ref: Ref) -> Project:
        found = self.store.project_by_ref(ref["id"] if isinstance(ref, dict) else ref)
        if found is None:
            raise KeyError(f"no project {ref!r}")
        return found

    def _mr(self, ref: Ref) -> MergeRequest:
        if isinstance(ref, dict):
            return self.store.mrs[(ref["project_id"], ref["iid"])]
        return next(m for m in self.store.mrs.values() if m.id == ref)

    def _note(self, ref: Ref) -> Note:
        return self.store.notes[ref["id"] if isinstance(ref, dict) else int(ref)]
