"""Unit tests of ``bot.gitlab.Client``, GitLab's HTTP answers stubbed with
``responses`` in the shapes GitLab's REST documentation gives.

Every stub checks that the ``PRIVATE-TOKEN`` header was sent and the exact query
string (and JSON body, when there is one); the mock fails a test that leaves a
stub unused, and no test may log the bot's token or the webhook secret.

Cases:

- Reading: ``whoami`` (``GET /user``), ``ping``, ``project`` by id and by path
  (URL-encoded), ``merge_request`` with draft, fork and author facts,
  ``open_merge_requests`` across pages, ``user_id`` found and unknown,
  ``token_scopes``, ``hooks`` with GitLab's flags and ``alert_status``.
- Notes: ``find_note`` follows pagination to the last page, finds the bot's note
  on page 2 while another author's note on page 1 carries the same marker, takes
  any author's note when the bot's id is unknown, and answers None when no
  note has the marker; ``create_note``, ``edit_note``, ``reply`` in a thread and
  on the MR; ``replied`` in a thread and across the MR's pages, true and false;
  ``award`` created, already awarded (GitLab's 404 "has already been taken")
  counted as done, and a server error still raised.
- People: ``membership`` read from ``members/all/:user_id``, a blocked user's
  state passed on, 404 meaning no membership; ``ssh_keys`` dropping signing-only
  and expired keys (expiring now counts as expired), keeping keys without a
  ``usage_type`` (older GitLab).
- Environments: ``ensure_environment`` reusing one (its URL updated only when it
  differs) or creating it; ``deploy``; ``stop_environment``, an environment
  already gone counted as stopped.
- Webhooks: ``install_hook`` creating a missing hook, updating the one at the
  same URL instead of adding another, with the events, SSL verification, the
  secret and the optional signing secret; a refusal names neither secret.
- Clone tokens: ``clone_token_ids`` reads every page of the project's deploy
  tokens and keeps those of exactly that name not yet revoked, expired ones
  included; a project GitLab does not know holds none, and a refusal is still
  raised.
- Errors from ``_call``: 429 with ``Retry-After`` as delta-seconds or an
  HTTP-date (past dates meaning now), 5xx, connection refused and timeouts are
  temporary; 404 is ``NotFound``; other 4xx are permanent; 401 and 403 are
  configuration errors; a delay from an earlier answer is not carried over; and
  every public method fails at the first 429 instead of sleeping in
  python-gitlab's own retry loop.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import responses
from responses import matchers

from bot.errors import BotError, ConfigError, PermanentError, TemporaryError
from bot.gitlab import (
    Client,
    Hook,
    Membership,
    NotFound,
    Project,
    RegisteredHook,
    User,
)
from bot.settings import Settings

URL = "https://gitlab.example.test"
API = f"{URL}/api/v4"
TOKEN = "glpat-unit-test-token-0123456789"
SECRET = "hook-secret-never-printed"
SIGNING_SECRET = "whsec_c2lnbmluZy1zZWNyZXQtbmV2ZXItcHJpbnRlZA=="
SECRETS = (TOKEN, SECRET, SIGNING_SECRET)

BOT_ID = 99
PROJECT = Project(1, "team/app", f"{URL}/team/app.git", f"{URL}/team/app")
NOTES = "/projects/1/merge_requests/7/notes"
DISCUSSION = "6a9c1750b37d513a43987b574953fceb50b03ce7"
MARKER = "<!-- review-workspace-bot:1:7 -->"
HOOK_URL = "https://rwbot.example.test/webhooks/gitlab"
NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)

# What ``install_hook`` must send besides the URL and secrets: comments and MR
# events only (GitLab turns push events on unless told otherwise), TLS checked.
HOOK_BODY = {
    "url": HOOK_URL,
    "token": SECRET,
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


# -- GitLab's answers (docs.gitlab.com/api/...) -------------------------------


def user_json(user_id: int, username: str, state: str = "active") -> dict[str, Any]:
    return {
        "id": user_id,
        "username": username,
        "name": username.title(),
        "state": state,
        "locked": state != "active",
        "avatar_url": None,
        "web_url": f"{URL}/{username}",
    }


def note_json(note_id: int, body: str, author_id: int = BOT_ID) -> dict[str, Any]:
    return {
        "id": note_id,
        "type": None,
        "body": body,
        "attachment": None,
        "author": user_json(author_id, f"user{author_id}"),
        "created_at": "2025-06-01T10:00:00.000Z",
        "updated_at": "2025-06-01T10:00:00.000Z",
        "system": False,
        "noteable_id": 377,
        "noteable_type": "MergeRequest",
        "project_id": 1,
        "noteable_iid": 7,
        "resolvable": False,
        "confidential": False,
        "internal": False,
        "imported": False,
        "imported_from": "none",
    }


def mr_json(iid: int, **changes: Any) -> dict[str, Any]:
    return {
        "id": 1000 + iid,
        "iid": iid,
        "project_id": 1,
        "title": f"Change {iid}",
        "state": "opened",
        "draft": False,
        "work_in_progress": False,
        "sha": f"{iid:040x}",
        "source_branch": f"topic-{iid}",
        "target_branch": "main",
        "source_project_id": 1,
        "target_project_id": 1,
        "author": user_json(5, "author"),
        "updated_at": "2025-06-01T10:00:00.000Z",
        "web_url": f"{URL}/team/app/-/merge_requests/{iid}",
        **changes,
    }


def environment_json(env_id: int, name: str, external_url: str) -> dict[str, Any]:
    return {
        "id": env_id,
        "name": name,
        "slug": name.replace("/", "-"),
        "description": None,
        "external_url": external_url,
        "state": "available",
        "tier": "development",
        "created_at": "2025-06-01T10:00:00.000Z",
        "updated_at": "2025-06-01T10:00:00.000Z",
        "auto_stop_at": None,
    }


def hook_json(hook_id: int, url: str, **changes: Any) -> dict[str, Any]:
    return {
        "id": hook_id,
        "url": url,
        "name": "",
        "description": "",
        "project_id": 1,
        "created_at": "2025-06-01T10:00:00Z",
        **{key: value for key, value in HOOK_BODY.items() if key.endswith("events")},
        "enable_ssl_verification": True,
        "alert_status": "executable",
        "disabled_until": None,
        "url_variables": [],
        "custom_headers": [],
        "token_present": True,
        **changes,
    }


def deploy_token_json(token_id: int, name: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": token_id,
        "name": name,
        "username": f"gitlab+deploy-token-{token_id}",
        "expires_at": "2025-06-01T13:00:00.000Z",
        "revoked": False,
        "expired": False,
        "scopes": ["read_repository"],
        **fields,
    }


def key_json(key_id: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": key_id,
        "title": f"key {key_id}",
        "key": f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA{key_id} user@host",
        "created_at": "2025-01-01T00:00:00.000Z",
        "expires_at": None,
        "usage_type": "auth",
        **fields,
    }


# -- stubs --------------------------------------------------------------------


@pytest.fixture
def gl() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def client() -> Client:
    settings = Settings(
        gitlab_url=URL,
        gitlab_token=TOKEN,
        webhook_secret=SECRET,
        public_url="https://rwbot.example.test",
    )
    return Client(settings)


@pytest.fixture(autouse=True)
def no_secret_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    for secret in SECRETS:
        assert secret not in caplog.text


def stub(
    gl: responses.RequestsMock,
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    sent: dict[str, Any] | None = None,
    status: int = 200,
    answer: Any = None,
    headers: dict[str, str] | None = None,
) -> responses.BaseResponse:
    """Stand in for one GitLab endpoint, answering only a request that carries
    the token, exactly ``query`` and, if given, exactly the JSON ``sent``."""
    match = [
        matchers.header_matcher({"PRIVATE-TOKEN": TOKEN}),
        matchers.query_param_matcher(query or {}),
    ]
    if sent is not None:
        match.append(matchers.json_params_matcher(sent))
    return gl.add(
        method, API + path, json=answer, status=status, headers=headers, match=match
    )


def stub_pages(
    gl: responses.RequestsMock,
    path: str,
    query: dict[str, str],
    pages: list[list[dict[str, Any]]],
) -> None:
    """Stand in for a list endpoint answering ``pages``, with the headers GitLab
    paginates by (docs.gitlab.com/api/rest, "Offset-based pagination")."""

    def link(page: int) -> str:
        return f"{API}{path}?{urlencode({**query, 'page': page})}"

    last = len(pages)
    for page, items in enumerate(pages, start=1):
        rels = [f'<{link(1)}>; rel="first"', f'<{link(last)}>; rel="last"']
        if page < last:
            rels.insert(0, f'<{link(page + 1)}>; rel="next"')
        headers = {
            "Link": ", ".join(rels),
            "X-Page": str(page),
            "X-Next-Page": str(page + 1) if page < last else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
            "X-Per-Page": query.get("per_page", "20"),
            "X-Total": str(sum(map(len, pages))),
            "X-Total-Pages": str(last),
        }
        sent = {**query, "page": str(page)} if page > 1 else query
        stub(gl, "GET", path, query=sent, answer=items, headers=headers)


def failure(kind: type[BotError], call: Callable[[], object]) -> BotError:
    """The error ``call`` raises, checked to name no secret down its chain."""
    with pytest.raises(kind) as info:
        call()
    err: BaseException | None = info.value
    while err is not None:
        text = f"{err} {err!r} {getattr(err, 'response_body', b'')!r}"
        assert not any(secret in text for secret in SECRETS)
        err = err.__cause__ or err.__context__
    return info.value


# -- reading ------------------------------------------------------------------


def test_whoami_reads_the_bot_user(gl, client):
    stub(gl, "GET", "/user", answer=user_json(BOT_ID, "project_1_bot_abc"))

    assert client.whoami() == User(BOT_ID, "project_1_bot_abc", "Project_1_Bot_Abc")


def test_ping_reads_the_current_user(gl, client):
    called = stub(gl, "GET", "/user", answer=user_json(BOT_ID, "bot"))

    client.ping()

    assert called.call_count == 1


@pytest.mark.parametrize(
    ("ref", "path"), [(1, "/projects/1"), ("team/app", "/projects/team%2Fapp")]
)
def test_project_is_read_by_id_or_by_url_encoded_path(gl, client, ref, path):
    answer = {
        "id": 1,
        "path_with_namespace": "team/app",
        "http_url_to_repo": f"{URL}/team/app.git",
        "web_url": f"{URL}/team/app",
        "default_branch": "main",
    }
    stub(gl, "GET", path, answer=answer)

    assert client.project(ref) == PROJECT


def test_merge_request_facts_say_draft_fork_and_author(gl, client):
    answer = mr_json(7, draft=True, source_project_id=2, state="opened")
    stub(gl, "GET", "/projects/1/merge_requests/7", answer=answer)

    facts = client.merge_request(PROJECT, 7)

    assert (facts.project_id, facts.mr_iid, facts.project_path) == (1, 7, "team/app")
    assert facts.draft and facts.is_fork
    assert (facts.head_sha, facts.source_branch) == (f"{7:040x}", "topic-7")
    assert facts.author_id == 5
    assert facts.updated_at == dt.datetime(2025, 6, 1, 10, 0, tzinfo=dt.UTC)
    assert facts.mr_url == f"{URL}/team/app/-/merge_requests/7"


def test_open_merge_requests_are_read_from_every_page(gl, client):
    query = {"state": "opened", "per_page": "100"}
    pages = [[mr_json(1), mr_json(2)], [mr_json(3)]]
    stub_pages(gl, "/projects/1/merge_requests", query, pages)

    facts = client.open_merge_requests(PROJECT)

    assert [f.mr_iid for f in facts] == [1, 2, 3]
    assert not any(f.draft or f.is_fork for f in facts)


@pytest.mark.parametrize(
    ("found", "expected"), [([user_json(3, "alice")], 3), ([], None)]
)
def test_user_id_looks_the_username_up(gl, client, found, expected):
    stub(gl, "GET", "/users", query={"username": "alice"}, answer=found)

    assert client.user_id("alice") == expected


def test_token_scopes_are_read_from_the_token_itself(gl, client):
    answer = {
        "id": 4,
        "name": "review-workspace-bot",
        "revoked": False,
        "created_at": "2025-01-01T00:00:00.000Z",
        "scopes": ["api", "read_repository"],
        "user_id": BOT_ID,
        "last_used_at": None,
        "active": True,
        "expires_at": "2026-01-01",
    }
    stub(gl, "GET", "/personal_access_tokens/self", answer=answer)

    assert client.token_scopes() == ["api", "read_repository"]


def test_hooks_report_gitlab_flags_and_alert_status(gl, client):
    disabled = hook_json(
        13, HOOK_URL, note_events=False, alert_status="temporarily_disabled"
    )
    older = hook_json(14, "https://other.example.test/hook", push_events=True)
    del older["alert_status"]  # GitLab before 16.x does not report it
    stub(gl, "GET", "/projects/1/hooks", answer=[disabled, older])

    hooks = client.hooks(PROJECT)

    assert [(h.id, h.url, h.alert_status) for h in hooks] == [
        (13, HOOK_URL, "temporarily_disabled"),
        (14, "https://other.example.test/hook", "executable"),
    ]
    assert isinstance(hooks[0], RegisteredHook)
    assert hooks[0].flags["merge_requests_events"]
    assert not hooks[0].flags["note_events"]
    assert hooks[1].flags["push_events"]
    assert hooks[1].flags["enable_ssl_verification"]


# -- notes --------------------------------------------------------------------

NOTES_QUERY = {"per_page": "100", "sort": "asc", "order_by": "created_at"}


def test_find_note_follows_pages_to_the_bots_note(gl, client):
    impostor = note_json(10, f"copied {MARKER}", author_id=5)
    pages = [[note_json(9, "hello"), impostor], [note_json(11, f"ws\n{MARKER}")]]
    stub_pages(gl, NOTES, NOTES_QUERY, pages)

    assert client.find_note(1, 7, MARKER, BOT_ID) == 11


def test_find_note_takes_any_author_when_the_bots_id_is_unknown(gl, client):
    pages = [[note_json(10, f"copied {MARKER}", author_id=5)]]
    stub_pages(gl, NOTES, NOTES_QUERY, pages)

    assert client.find_note(1, 7, MARKER, None) == 10


def test_find_note_reads_every_page_before_answering_none(gl, client):
    pages = [[note_json(9, "hello")], [note_json(10, "")], [note_json(11, "bye")]]
    stub_pages(gl, NOTES, NOTES_QUERY, pages)

    assert client.find_note(1, 7, MARKER, BOT_ID) is None


def test_create_note_posts_the_body(gl, client):
    sent = {"body": "**Workspace** starting"}
    stub(gl, "POST", NOTES, sent=sent, status=201, answer=note_json(21, sent["body"]))

    assert client.create_note(1, 7, sent["body"]) == 21


def test_edit_note_puts_the_new_body(gl, client):
    called = stub(
        gl, "PUT", f"{NOTES}/21", sent={"body": "ready"}, answer=note_json(21, "ready")
    )

    client.edit_note(1, 7, 21, "ready")

    assert called.call_count == 1


@pytest.mark.parametrize(
    ("discussion", "path"),
    [
        (DISCUSSION, f"/projects/1/merge_requests/7/discussions/{DISCUSSION}/notes"),
        (None, NOTES),
    ],
)
def test_reply_answers_in_the_thread_or_on_the_mr(gl, client, discussion, path):
    stub(gl, "POST", path, sent={"body": "done"}, status=201, answer=note_json(22, ""))

    assert client.reply(1, 7, discussion, "done") == 22


@pytest.mark.parametrize(("body", "expected"), [(f"ok\n{MARKER}", True), ("ok", False)])
def test_replied_looks_in_the_thread(gl, client, body, expected):
    answer = {
        "id": DISCUSSION,
        "individual_note": False,
        "notes": [note_json(20, "/workspace start", 5), note_json(22, body)],
    }
    path = f"/projects/1/merge_requests/7/discussions/{DISCUSSION}"
    stub(gl, "GET", path, answer=answer)

    assert client.replied(1, 7, DISCUSSION, MARKER, BOT_ID) is expected


def test_a_marker_pasted_by_someone_else_is_not_a_reply_of_ours(gl, client):
    answer = {
        "id": DISCUSSION,
        "individual_note": False,
        "notes": [note_json(20, f"/workspace start\n{MARKER}", 5)],
    }
    path = f"/projects/1/merge_requests/7/discussions/{DISCUSSION}"
    stub(gl, "GET", path, answer=answer)

    assert client.replied(1, 7, DISCUSSION, MARKER, BOT_ID) is False


@pytest.mark.parametrize(("body", "expected"), [(f"ok\n{MARKER}", True), ("ok", False)])
def test_replied_without_a_thread_reads_every_page_of_notes(gl, client, body, expected):
    pages = [[note_json(20, "/workspace start", 5)], [note_json(22, body)]]
    stub_pages(gl, NOTES, {"per_page": "100"}, pages)

    assert client.replied(1, 7, None, MARKER, BOT_ID) is expected


AWARDED = {
    "id": 4,
    "name": "eyes",
    "user": user_json(BOT_ID, "bot"),
    "created_at": "2025-06-01T10:00:00.000Z",
    "updated_at": "2025-06-01T10:00:00.000Z",
    "awardable_id": 21,
    "awardable_type": "Note",
}
# What GitLab answers a second identical award (lib/api/award_emoji.rb turns the
# failed validation into not_found!).
ALREADY_AWARDED = {"message": "404 Award Emoji Name has already been taken Not Found"}


@pytest.mark.parametrize(("status", "answer"), [(201, AWARDED), (404, ALREADY_AWARDED)])
def test_award_counts_an_existing_award_as_done(gl, client, status, answer):
    path = f"{NOTES}/21/award_emoji"
    called = stub(gl, "POST", path, sent={"name": "eyes"}, status=status, answer=answer)

    client.award(1, 7, 21, "eyes")

    assert called.call_count == 1


def test_award_still_raises_when_gitlab_fails(gl, client):
    path = f"{NOTES}/21/award_emoji"
    stub(gl, "POST", path, status=500, answer={"message": "500 Internal Server Error"})

    failure(TemporaryError, lambda: client.award(1, 7, 21, "eyes"))


# -- people -------------------------------------------------------------------


@pytest.mark.parametrize("state", ["active", "blocked"])
def test_membership_reports_access_level_and_user_state(gl, client, state):
    answer = {
        **user_json(3, "alice", state=state),
        "access_level": 30,
        "created_at": "2025-01-01T00:00:00.000Z",
        "created_by": None,
        "expires_at": None,
        "group_saml_identity": None,
        "membership_state": "active",
    }
    stub(gl, "GET", "/projects/1/members/all/3", answer=answer)

    assert client.membership(1, 3) == Membership(access_level=30, state=state)


def test_membership_is_none_for_a_non_member(gl, client):
    answer = {"message": "404 Not found"}
    stub(gl, "GET", "/projects/1/members/all/3", status=404, answer=answer)

    assert client.membership(1, 3) is None


def test_ssh_keys_drop_signing_only_and_expired_keys(gl, client):
    keys = [
        key_json(1),
        key_json(2, usage_type="signing"),
        key_json(3, usage_type="auth_and_signing", expires_at="2025-07-01T00:00:00Z"),
        key_json(4, expires_at="2025-05-31T00:00:00.000Z"),
        key_json(5, expires_at="2025-06-01T12:00:00.000Z"),
        key_json(6, key=key_json(6)["key"] + "\n"),
    ]
    del keys[-1]["usage_type"]  # GitLab before 15.7 has no usage_type
    stub(gl, "GET", "/users/3/keys", answer=keys)

    found = client.ssh_keys(3, NOW)

    assert found == [key_json(n)["key"] for n in (1, 3, 6)]


# -- environments -------------------------------------------------------------

ENV = "review-workspace/mr-7"
JOIN = "https://rwbot.example.test/w/1/7"


@pytest.mark.parametrize("current", [JOIN, "https://old.example.test/w/1/7"])
def test_ensure_environment_reuses_the_one_with_that_name(gl, client, current):
    found = [environment_json(9, ENV, current)]
    stub(gl, "GET", "/projects/1/environments", query={"name": ENV}, answer=found)
    if current != JOIN:
        sent = {"external_url": JOIN}
        updated = environment_json(9, ENV, JOIN)
        stub(gl, "PUT", "/projects/1/environments/9", sent=sent, answer=updated)

    assert client.ensure_environment(1, ENV, JOIN) == 9


def test_ensure_environment_creates_a_missing_one(gl, client):
    stub(gl, "GET", "/projects/1/environments", query={"name": ENV}, answer=[])
    sent = {"name": ENV, "external_url": JOIN, "tier": "development"}
    created = environment_json(9, ENV, JOIN)
    stub(gl, "POST", "/projects/1/environments", sent=sent, status=201, answer=created)

    assert client.ensure_environment(1, ENV, JOIN) == 9


def test_deploy_records_a_successful_deployment(gl, client):
    sha = "a" * 40
    sent = {
        "environment": ENV,
        "sha": sha,
        "ref": "topic-7",
        "tag": False,
        "status": "success",
    }
    answer = {
        "id": 42,
        "iid": 2,
        "ref": "topic-7",
        "sha": sha,
        "status": "success",
        "created_at": "2025-06-01T10:00:00.000Z",
        "user": user_json(BOT_ID, "bot"),
        "environment": environment_json(9, ENV, JOIN),
        "deployable": None,
    }
    called = stub(
        gl, "POST", "/projects/1/deployments", sent=sent, status=201, answer=answer
    )

    client.deploy(1, ENV, sha, "topic-7")

    assert called.call_count == 1


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (200, {**environment_json(9, ENV, JOIN), "state": "stopping"}),
        (404, {"message": "404 Environment Not Found"}),
    ],
)
def test_stop_environment_counts_a_missing_one_as_stopped(gl, client, status, answer):
    path = "/projects/1/environments/9/stop"
    called = stub(gl, "POST", path, status=status, answer=answer)

    client.stop_environment(1, 9)

    assert called.call_count == 1


# -- webhooks -----------------------------------------------------------------


@pytest.mark.parametrize("signing", [None, SIGNING_SECRET])
def test_install_hook_creates_a_missing_hook(gl, client, signing):
    other = hook_json(11, "https://ci.example.test/hook")
    stub(gl, "GET", "/projects/1/hooks", answer=[other])
    sent = {**HOOK_BODY, **({"signing_token": signing} if signing else {})}
    answer = hook_json(12, HOOK_URL)
    stub(gl, "POST", "/projects/1/hooks", sent=sent, status=201, answer=answer)

    assert client.install_hook(PROJECT, HOOK_URL, SECRET, signing) == Hook(12, True)


def test_install_hook_updates_the_hook_at_the_same_url(gl, client):
    ours = hook_json(12, HOOK_URL, note_events=False, enable_ssl_verification=False)
    pages = [[hook_json(11, "https://ci.example.test/hook")], [ours]]
    stub_pages(gl, "/projects/1/hooks", {}, pages)
    answer = hook_json(12, HOOK_URL)
    stub(gl, "PUT", "/projects/1/hooks/12", sent=HOOK_BODY, answer=answer)

    assert client.install_hook(PROJECT, HOOK_URL, SECRET, None) == Hook(12, False)


def test_install_hook_refusal_names_no_secret(gl, client):
    stub(gl, "GET", "/projects/1/hooks", answer=[])
    blocked = {"message": {"url": ["is blocked: Requests to the local network"]}}
    stub(gl, "POST", "/projects/1/hooks", status=400, answer=blocked)

    err = failure(
        PermanentError,
        lambda: client.install_hook(PROJECT, HOOK_URL, SECRET, SIGNING_SECRET),
    )

    assert "team/app" in str(err)


# -- clone tokens -------------------------------------------------------------

CLONE_TOKENS = "/projects/1/deploy_tokens"
CLONE_NAME = "rwbot rwbot-prod-p1-mr7"


def test_clone_token_ids_are_the_live_ones_of_that_name_from_every_page(gl, client):
    expired = {"expires_at": "2025-06-01T11:00:00.000Z", "expired": True}
    pages = [
        [deploy_token_json(3, CLONE_NAME), deploy_token_json(4, "ci pull")],
        [
            deploy_token_json(5, CLONE_NAME, revoked=True),
            deploy_token_json(6, CLONE_NAME, **expired),
            deploy_token_json(7, f"{CLONE_NAME}0"),  # merge request !70's
        ],
    ]
    stub_pages(gl, CLONE_TOKENS, {"per_page": "100"}, pages)

    assert client.clone_token_ids(1, CLONE_NAME) == [3, 6]


def test_clone_token_ids_of_a_project_gitlab_does_not_know_are_none(gl, client):
    answer = {"message": "404 Project Not Found"}
    query = {"per_page": "100"}
    stub(gl, "GET", CLONE_TOKENS, query=query, status=404, answer=answer)

    assert client.clone_token_ids(1, CLONE_NAME) == []


def test_clone_token_ids_refused_is_raised(gl, client):
    answer = {"message": "403 Forbidden"}
    query = {"per_page": "100"}
    stub(gl, "GET", CLONE_TOKENS, query=query, status=403, answer=answer)

    err = failure(ConfigError, lambda: client.clone_token_ids(1, CLONE_NAME))

    assert str(err) == "the bot's token may not list clone tokens of project 1"


# -- errors -------------------------------------------------------------------


def http_date(seconds_from_now: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now)
    return email.utils.format_datetime(when, usegmt=True)


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (429, {"Retry-After": "30"}, 30.0),
        (429, {"Retry-After": "0"}, 0.0),
        (429, {}, None),
        (429, {"Retry-After": "soon"}, None),
        (500, {}, None),
        (502, {}, None),
        (503, {"Retry-After": "120"}, 120.0),
    ],
)
def test_rate_limits_and_server_errors_are_temporary(
    gl, client, status, headers, retry_after
):
    stub(gl, "POST", NOTES, status=status, answer=None, headers=headers)

    err = failure(TemporaryError, lambda: client.create_note(1, 7, "hi"))

    assert isinstance(err, TemporaryError)
    assert err.retry_after == retry_after
    assert str(err) == f"GitLab answered {status} to comment on !7"


@pytest.mark.parametrize(("ahead", "expected"), [(90, 90.0), (-600, 0.0)])
def test_retry_after_as_an_http_date_is_seconds_from_now(gl, client, ahead, expected):
    headers = {"Retry-After": http_date(ahead), "RateLimit-Name": "throttle_api"}
    stub(gl, "POST", NOTES, status=429, answer=None, headers=headers)

    err = failure(TemporaryError, lambda: client.create_note(1, 7, "hi"))

    assert isinstance(err, TemporaryError)
    assert err.retry_after == pytest.approx(expected, abs=2)


def test_a_delay_asked_earlier_is_not_carried_over(gl, client):
    stub(gl, "POST", NOTES, status=429, headers={"Retry-After": "30"})
    stub(gl, "GET", "/user", status=503)

    first = failure(TemporaryError, lambda: client.create_note(1, 7, "hi"))
    second = failure(TemporaryError, client.whoami)

    assert isinstance(first, TemporaryError) and isinstance(second, TemporaryError)
    assert (first.retry_after, second.retry_after) == (30.0, None)


@pytest.mark.parametrize(
    "cause",
    [
        requests.ConnectionError("[Errno 111] Connection refused"),
        requests.ReadTimeout("read timed out"),
    ],
)
def test_an_unreachable_gitlab_is_temporary(gl, client, cause):
    gl.add("POST", API + NOTES, body=cause)

    err = failure(TemporaryError, lambda: client.create_note(1, 7, "hi"))

    assert str(err) == "GitLab unreachable (comment on !7)"
    assert err.__cause__ is cause


@pytest.mark.parametrize(
    ("status", "kind", "message"),
    [
        (404, NotFound, "comment on !7: not found"),
        (400, PermanentError, "GitLab refused to comment on !7 (400)"),
        (422, PermanentError, "GitLab refused to comment on !7 (422)"),
        (401, ConfigError, "GitLab rejected the bot's token (comment on !7)"),
        (403, ConfigError, "the bot's token may not comment on !7"),
    ],
)
def test_refusals_are_classified_by_what_to_do_next(gl, client, status, kind, message):
    answer = {"message": f"{status} Refused"}
    stub(gl, "POST", NOTES, status=status, answer=answer)

    err = failure(kind, lambda: client.create_note(1, 7, "hi"))

    assert type(err) is kind
    assert str(err) == message


MR = "/projects/1/merge_requests"
THREAD = f"{MR}/7/discussions/{DISCUSSION}"


def first(call: Callable[[Client], object], request: str, name: str) -> Any:
    """A public method's call, and the first request it makes (``METHOD path``)."""
    return pytest.param(call, *request.split(" "), id=name)


@pytest.mark.parametrize(
    ("call", "method", "path"),
    [
        first(lambda c: c.whoami(), "GET /user", "whoami"),
        first(lambda c: c.ping(), "GET /user", "ping"),
        first(lambda c: c.project(1), "GET /projects/1", "project"),
        first(lambda c: c.merge_request(PROJECT, 7), f"GET {MR}/7", "merge_request"),
        first(lambda c: c.open_merge_requests(PROJECT), f"GET {MR}", "open_mrs"),
        first(lambda c: c.find_note(1, 7, MARKER, 1), f"GET {NOTES}", "find_note"),
        first(lambda c: c.create_note(1, 7, "x"), f"POST {NOTES}", "create_note"),
        first(lambda c: c.edit_note(1, 7, 21, "x"), f"PUT {NOTES}/21", "edit_note"),
        first(
            lambda c: c.award(1, 7, 21, "eyes"), f"POST {NOTES}/21/award_emoji", "award"
        ),
        first(
            lambda c: c.reply(1, 7, DISCUSSION, "x"), f"POST {THREAD}/notes", "reply"
        ),
        first(lambda c: c.reply(1, 7, None, "x"), f"POST {NOTES}", "reply on MR"),
        first(
            lambda c: c.replied(1, 7, DISCUSSION, "x", 1), f"GET {THREAD}", "replied"
        ),
        first(lambda c: c.replied(1, 7, None, "x", 1), f"GET {NOTES}", "replied on MR"),
        first(lambda c: c.user_id("alice"), "GET /users", "user_id"),
        first(
            lambda c: c.ensure_environment(1, ENV, JOIN),
            "GET /projects/1/environments",
            "ensure_environment",
        ),
        first(
            lambda c: c.deploy(1, ENV, "a" * 40, "x"),
            "POST /projects/1/deployments",
            "deploy",
        ),
        first(
            lambda c: c.stop_environment(1, 9),
            "POST /projects/1/environments/9/stop",
            "stop_environment",
        ),
        first(
            lambda c: c.membership(1, 3), "GET /projects/1/members/all/3", "membership"
        ),
        first(lambda c: c.ssh_keys(3, NOW), "GET /users/3/keys", "ssh_keys"),
        first(
            lambda c: c.install_hook(PROJECT, HOOK_URL, SECRET, None),
            "GET /projects/1/hooks",
            "install_hook",
        ),
        first(lambda c: c.hooks(PROJECT), "GET /projects/1/hooks", "hooks"),
        first(
            lambda c: c.token_scopes(),
            "GET /personal_access_tokens/self",
            "token_scopes",
        ),
        first(
            lambda c: c.clone_token_ids(1, CLONE_NAME),
            f"GET {CLONE_TOKENS}",
            "clone_token_ids",
        ),
    ],
)
def test_every_method_gives_up_at_the_first_429(gl, client, call, method, path):
    # python-gitlab would otherwise sleep Retry-After seconds in this thread,
    # up to ten times, before the reconciler hears anything.
    limited = gl.add(
        method,
        API + path,
        status=429,
        headers={"Retry-After": "0"},
        body="Retry later\n",
    )

    err = failure(TemporaryError, lambda: call(client))

    assert isinstance(err, TemporaryError) and err.retry_after == 0.0
    assert limited.call_count == 1
