"""The GitLab double behaves like GitLab where the bot depends on it.

Every case drives the double with the real client the bot uses, over loopback:

- REST with python-gitlab 8: project by path and id, opened MRs across several
  pages (pagination headers and ``Link``), MR shape, notes create/edit/list and
  the author-only edit rule, discussions, award emoji, ``members/all`` incl. the
  404 for non-members, hooks with a write-only token, users' SSH keys,
  environments and deployments (a ref or sha missing from the project's
  repository refused with 400, as for a fork's branch; names outside GitLab's
  environment_name_regex too); 401 without a valid token, GitLab's 400/404
  error bodies, OAuth tokens acting as their user with scope checks.
- Git smart HTTP with the ``git`` CLI: clone and fetch of
  ``refs/merge-requests/<iid>/head`` (also for a fork MR) with a token, 401
  with a Basic challenge without one, a push moving the MR head.
- Webhooks: Merge Request Hook and Note Hook carry the documented keys,
  ``oldrev`` only after a push, draft changes; deliveries carry GitLab's headers,
  a verifiable Standard Webhooks signature and a reusable Idempotency-Key.
- OAuth with Authlib: PKCE S256 code flow, userinfo and ID token, refresh
  rotation, a reused code and a wrong verifier refused, unregistered redirect
  URIs and scopes refused, the login form when nobody is signed in.
- Faults: injected 429 with Retry-After (recorded, then retried by
  python-gitlab), an unreachable double refusing connections until restored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import gitlab
import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from flask import Flask, request
from joserfc import jwt
from joserfc.jwk import KeySet
from werkzeug.serving import make_server

from tests.gitlab_double import (
    DEVELOPER,
    REPORTER,
    GitLabDouble,
    make_signing_secret,
)

CALLBACK = "http://127.0.0.1:9/auth/callback"


@pytest.fixture
def double() -> Iterator[GitLabDouble]:
    with GitLabDouble() as running:
        yield running


@pytest.fixture
def alice(double: GitLabDouble) -> dict[str, Any]:
    return double.add_user("alice", name="Alice Liddell", public_email="a@pub.test")


@pytest.fixture
def project(double: GitLabDouble, alice: dict[str, Any]) -> dict[str, Any]:
    created = double.add_project("team/app", files={"README.md": "hello\n"})
    double.set_member(created, alice, DEVELOPER)
    return created


@pytest.fixture
def gl(double: GitLabDouble) -> gitlab.Gitlab:
    return gitlab.Gitlab(double.url, private_token=double.token)


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook endpoint that keeps each delivery's headers and raw body."""
    received: list[dict[str, Any]] = []
    app = Flask("receiver")

    @app.post("/hook")
    def hook() -> tuple[str, int]:
        received.append({"headers": dict(request.headers), "body": request.get_data()})
        return "", 204

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.port}/hook", received
    server.shutdown()
    server.server_close()


def get(url: str, **kwargs: Any) -> requests.Response:
    timeout = kwargs.pop("timeout", 10)
    return requests.get(url, timeout=timeout, **kwargs)


def post(url: str, **kwargs: Any) -> requests.Response:
    timeout = kwargs.pop("timeout", 10)
    return requests.post(url, timeout=timeout, **kwargs)


def git(*args: str, token: str | None = None, cwd: Path | None = None) -> str:
    """Run git with the token sent as a Basic header from the environment,
    never in argv or the URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull)
    env["GIT_TERMINAL_PROMPT"] = "0"
    if token:
        basic = base64.b64encode(f"oauth2:{token}".encode()).decode()
        env.update(
            GIT_CONFIG_COUNT="1",
            GIT_CONFIG_KEY_0="http.extraHeader",
            GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}",
        )
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if result.returncode:
        raise AssertionError(f"git {args[0]} failed: {result.stderr}")
    return result.stdout.strip()


# -- REST -----------------------------------------------------------------


def test_project_is_found_by_path_and_by_id_with_documented_fields(
    double: GitLabDouble, gl: gitlab.Gitlab, project: dict[str, Any]
) -> None:
    by_path = gl.projects.get("team/app")
    by_id = gl.projects.get(project["id"])

    assert by_path.id == by_id.id == project["id"]
    assert by_path.path_with_namespace == "team/app"
    assert by_path.http_url_to_repo == f"{double.url}/team/app.git"
    assert by_path.web_url == f"{double.url}/team/app"
    assert by_path.default_branch == "main"
    assert by_path.visibility == "private"
    assert by_path.namespace["full_path"] == "team"
    assert double.calls("GET", r"/api/v4/projects/team/app$")


def test_missing_or_wrong_token_is_401_with_gitlab_message(
    double: GitLabDouble, project: dict[str, Any]
) -> None:
    anonymous = get(f"{double.url}/api/v4/projects/{project['id']}")
    wrong = gitlab.Gitlab(double.url, private_token="nope")

    assert anonymous.status_code == 401
    assert anonymous.json() == {"message": "401 Unauthorized"}
    with pytest.raises(gitlab.GitlabAuthenticationError):
        wrong.projects.get(project["id"])


def test_bearer_header_is_accepted_like_private_token(
    double: GitLabDouble, alice: dict[str, Any]
) -> None:
    answer = get(
        f"{double.url}/api/v4/user",
        headers={"Authorization": f"Bearer {double.token}"},
    )

    assert answer.status_code == 200
    assert answer.json()["username"] == double.bot_user["username"]
    assert answer.json()["bot"] is True


def test_opened_mrs_are_listed_across_pages_by_following_link_headers(
    double: GitLabDouble, gl: gitlab.Gitlab, project: dict[str, Any]
) -> None:
    mrs = [
        double.open_mr(project, f"topic-{n}", {f"f{n}.txt": f"{n}\n"})
        for n in range(25)
    ]
    double.close(mrs[3])
    double.merge(mrs[4])

    listed = gl.projects.get(project["id"], lazy=True).mergerequests.list(
        state="opened", get_all=True, per_page=10
    )

    assert sorted(mr.iid for mr in listed) == sorted(
        mr["iid"] for mr in mrs if mr["iid"] not in (4, 5)
    )
    pages = [c.query.get("page") for c in double.calls("GET", r"/merge_requests$")]
    assert pages == [None, "2", "3"]


def test_pagination_headers_follow_gitlab_offset_pagination(
    double: GitLabDouble, project: dict[str, Any]
) -> None:
    for n in range(5):
        double.open_mr(project, f"topic-{n}", {"x.txt": f"{n}\n"})
    url = f"{double.url}/api/v4/projects/team%2Fapp/merge_requests"
    headers = {"PRIVATE-TOKEN": double.token}

    first = get(url, params={"per_page": 2}, headers=headers)
    last = get(url, params={"per_page": 2, "page": 3}, headers=headers)

    assert [mr["iid"] for mr in first.json()] == [5, 4]
    assert {k: first.headers[k] for k in ("X-Page", "X-Total", "X-Total-Pages")} == {
        "X-Page": "1",
        "X-Total": "5",
        "X-Total-Pages": "3",
    }
    assert first.headers["X-Next-Page"] == "2"
    assert first.headers["X-Prev-Page"] == ""
    assert first.links["next"]["url"] == f"{url}?per_page=2&page=2".replace(
        "per_page=2&page=2", "page=2&per_page=2"
    )
    assert first.links["last"]["url"].endswith("page=3&per_page=2")
    assert last.headers["X-Next-Page"] == ""
    assert "next" not in last.links
    assert [mr["iid"] for mr in last.json()] == [1]


def test_mr_has_the_fields_the_bot_reads(
    double: GitLabDouble, gl: gitlab.Gitlab, project: dict[str, Any], alice: dict
) -> None:
    opened = double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)

    mr = gl.projects.get(project["id"], lazy=True).mergerequests.get(1)

    assert mr.iid == 1 and mr.id == opened["id"]
    assert (mr.project_id, mr.source_project_id, mr.target_project_id) == (
        project["id"],
        project["id"],
        project["id"],
    )
    assert (mr.state, mr.draft, mr.source_branch, mr.target_branch) == (
        "opened",
        False,
        "feature",
        "main",
    )
    assert mr.sha == double.branch_sha(project, "feature")
    assert mr.diff_refs["head_sha"] == mr.sha
    assert mr.diff_refs["base_sha"] == double.branch_sha(project, "main")
    assert mr.author["username"] == "alice"
    assert mr.web_url == f"{double.url}/team/app/-/merge_requests/1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", mr.updated_at)


def test_bot_note_is_created_edited_and_listed_in_requested_order(
    double: GitLabDouble, gl: gitlab.Gitlab, project: dict[str, Any], alice: dict
) -> None:
    opened = double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)
    double.add_note(opened, alice, "first human comment")
    mr = gl.projects.get(project["id"], lazy=True).mergerequests.get(1, lazy=True)

    note = mr.notes.create({"body": "Workspace starting"})
    note.body = "Workspace ready"
    note.save()
    oldest_first = mr.notes.list(sort="asc", order_by="created_at", get_all=True)
    newest_first = mr.notes.list(get_all=True)

    assert note.author["username"] == double.bot_user["username"]
    assert mr.notes.get(note.id).body == "Workspace ready"
    assert [n.body for n in oldest_first] == ["first human comment", "Workspace ready"]
    assert [n.id for n in newest_first] == [n.id for n in oldest_first][::-1]
    put = double.calls("PUT", rf"/notes/{note.id}$")[0]
    assert put.json == {"body": "Workspace ready"}


def test_editing_someone_elses_note_is_forbidden(
    double: GitLabDouble, gl: gitlab.Gitlab, project: dict[str, Any], alice: dict
) -> None:
    opened = double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)
    theirs = double.add_note(opened, alice, "please review")
    mr = gl.projects.get(project["id"], lazy=True).mergerequests.get(1, lazy=True)
    note = mr.notes.get(theirs["id"])

    note.body = "hijacked"
    with pytest.raises(gitlab.GitlabUpdateError) as err:
        note.save()

    assert err.value.response_code == 403
    assert double.notes(opened)[-1]["body"] == "please review"


def test_reply_joins_the_commenters_discussion(
    double: GitLabDouble, gl: gitlab.Gitlab, project: dict[str, Any], alice: dict
) -> None:
    opened = double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)
    command = double.add_note(opened, alice, "/review-ws start")
    mr = gl.projects.get(project["id"], lazy=True).mergerequests.get(1, lazy=True)

    discussion = mr.discussions.get(command["discussion_id"], lazy=True)
    reply = discussion.notes.create({"body": "On it"})
    threads = mr.discussions.list(get_all=True)

    assert reply.type == "DiscussionNote"
    [thread] = threads
    assert thread.id == command["discussion_id"]
    assert thread.individual_note is False
    assert [n["body"] for n in thread.attributes["notes"]] == [
        "/review-ws start",
        "On it",
    ]


def test_award_emoji_on_a_note_can_be_added_listed_and_removed(
    double: GitLabDouble, gl: gitlab.Gitlab, project: dict[str, Any], alice: dict
) -> None:
    opened = double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)
    command = double.add_note(opened, alice, "/review-ws start")
    mr = gl.projects.get(project["id"], lazy=True).mergerequests.get(1, lazy=True)
    note = mr.notes.get(command["id"], lazy=True)

    award = note.awardemojis.create({"name": "eyes"})
    listed = note.awardemojis.list()
    with pytest.raises(gitlab.GitlabCreateError):
        note.awardemojis.create({"name": "eyes"})
    award.delete()

    assert [(a.name, a.user["username"]) for a in listed] == [("eyes", "review-bot")]
    assert award.awardable_type == "Note"
    assert double.award_emoji(command) == []


def test_members_all_gives_access_level_and_404_for_non_members(
    double: GitLabDouble, gl: gitlab.Gitlab, project: dict[str, Any], alice: dict
) -> None:
    bob = double.add_user("bob")
    members = gl.projects.get(project["id"], lazy=True).members_all

    member = members.get(alice["id"])
    with pytest.raises(gitlab.GitlabGetError) as err:
        members.get(bob["id"])
    double.remove_member(project, alice)
    with pytest.raises(gitlab.GitlabGetError):
        members.get(alice["id"])

    assert (member.username, member.access_level, member.state) == (
        "alice",
        DEVELOPER,
        "active",
    )
    assert member.expires_at is None
    assert err.value.response_code == 404
    assert json.loads(err.value.response_body) == {"message": "404 Not found"}


def test_hook_token_is_write_only_and_save_updates_the_hook(
    double: GitLabDouble, gl: gitlab.Gitlab, project: dict[str, Any]
) -> None:
    hooks = gl.projects.get(project["id"], lazy=True).hooks

    created = hooks.create(
        {
            "url": "http://127.0.0.1:9/webhook",
            "token": "s3cret",
            "merge_requests_events": True,
            "note_events": True,
        }
    )
    [listed] = hooks.list()
    listed.push_events = False
    listed.emoji_events = True
    listed.save()

    assert created.push_events is True and created.enable_ssl_verification is True
    assert created.token_present is True
    assert "token" not in listed.attributes
    assert (listed.push_events, listed.emoji_events) == (False, True)
    assert double.hooks(project)[0]["token"] == "s3cret"
    assert double.calls("POST", r"/hooks$")[0].json["token"] == "[REDACTED]"


def test_user_ssh_keys_are_listed_as_gitlab_key_objects(
    double: GitLabDouble, gl: gitlab.Gitlab
) -> None:
    carol = double.add_user(
        "carol",
        keys=[
            "ssh-ed25519 AAAAC3Nza carol@laptop",
            {"key": "ssh-ed25519 AAAAold", "expires_at": "2020-01-01T00:00:00.000Z"},
        ],
    )

    keys = gl.users.get(carol["id"], lazy=True).keys.list(get_all=True)

    assert [k.key for k in keys] == [
        "ssh-ed25519 AAAAC3Nza carol@laptop",
        "ssh-ed25519 AAAAold",
    ]
    assert {k.usage_type for k in keys} == {"auth_and_signing"}
    assert [k.expires_at for k in keys] == [None, "2020-01-01T00:00:00.000Z"]
    assert all(isinstance(k.id, int) and k.created_at for k in keys)


def test_environment_and_deployment_lifecycle(
    double: GitLabDouble, gl: gitlab.Gitlab, project: dict[str, Any], alice: dict
) -> None:
    opened = double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)
    remote = gl.projects.get(project["id"], lazy=True)

    env = remote.environments.create(
        {"name": "review/feature", "external_url": "https://ws.example/1"}
    )
    deployment = remote.deployments.create(
        {
            "environment": "review/feature",
            "sha": opened["sha"],
            "ref": "feature",
            "tag": False,
            "status": "running",
        }
    )
    deployment.status = "success"
    deployment.save()
    with pytest.raises(gitlab.GitlabDeleteError):
        env.delete()
    fetched = remote.deployments.get(deployment.id)
    env.stop()
    stopped = remote.environments.get(env.id)
    env.delete()

    assert env.tier == "development" and env.state == "available"
    assert deployment.environment["name"] == "review/feature"
    assert fetched.status == "success"
    assert stopped.state == "stopped"
    assert stopped.last_deployment["sha"] == opened["sha"]
    assert double.environments(project) == []


def test_a_deployment_must_name_a_ref_and_commit_of_the_project(
    double: GitLabDouble, gl: gitlab.Gitlab, project: dict[str, Any], alice: dict
) -> None:
    fork = double.add_project("outsider/app", files={"README.md": "hello\n"})
    opened = double.open_mr(
        project, "from-fork", {"a.txt": "a\n"}, author=alice, source_project=fork
    )
    remote = gl.projects.get(project["id"], lazy=True)
    fields = {"environment": "review/x", "tag": False, "status": "success"}

    with pytest.raises(gitlab.GitlabCreateError) as no_ref:
        remote.deployments.create({**fields, "sha": opened["sha"], "ref": "from-fork"})
    with pytest.raises(gitlab.GitlabCreateError) as no_sha:
        remote.deployments.create({**fields, "sha": "f" * 40, "ref": "main"})
    mr_ref = f"refs/merge-requests/{opened['iid']}/head"
    made = remote.deployments.create({**fields, "sha": opened["sha"], "ref": mr_ref})

    assert no_ref.value.response_code == 400
    assert "The branch or tag does not exist" in str(no_ref.value.error_message)
    assert no_sha.value.response_code == 400
    assert "The commit does not exist" in str(no_sha.value.error_message)
    assert made.ref == mr_ref and made.sha == opened["sha"]


@pytest.mark.parametrize("name", ["/review", "review/", "review:1", "r" * 256])
def test_an_environment_name_gitlab_refuses_is_a_400(
    gl: gitlab.Gitlab, project: dict[str, Any], name: str
) -> None:
    remote = gl.projects.get(project["id"], lazy=True)

    with pytest.raises(gitlab.GitlabCreateError) as refused:
        remote.environments.create({"name": name})

    assert refused.value.response_code == 400
    assert "cannot start or end with '/'" in str(refused.value.error_message)


def test_unknown_routes_and_bad_parameters_answer_like_gitlab(
    double: GitLabDouble, project: dict[str, Any], alice: dict[str, Any]
) -> None:
    headers = {"PRIVATE-TOKEN": double.token}
    base = f"{double.url}/api/v4/projects/{project['id']}"
    double.open_mr(project, "feature", {"a.txt": "a\n"})

    unknown = get(f"{double.url}/api/v4/nothing/here", headers=headers)
    bad_state = get(f"{base}/merge_requests?state=wat", headers=headers)
    bad_iid = get(f"{base}/merge_requests/abc", headers=headers)
    missing = get(f"{double.url}/api/v4/projects/999999", headers=headers)
    no_body = post(f"{base}/merge_requests/1/notes", headers=headers)

    assert (unknown.status_code, unknown.json()) == (404, {"error": "404 Not Found"})
    assert bad_state.status_code == 400
    assert bad_state.json() == {"error": "state does not have a valid value"}
    assert (bad_iid.status_code, bad_iid.json()) == (
        400,
        {"error": "merge_request_iid is invalid"},
    )
    assert missing.json() == {"message": "404 Project Not Found"}
    assert (no_body.status_code, no_body.json()) == (
        400,
        {"error": "body is missing"},
    )


def test_oauth_token_acts_as_its_user_within_its_scopes(
    double: GitLabDouble, project: dict[str, Any], alice: dict[str, Any]
) -> None:
    identity_only = double.issue_token(alice, scopes=["openid", "read_user"])
    as_alice = gitlab.Gitlab(double.url, oauth_token=identity_only)

    as_alice.auth()
    with pytest.raises(gitlab.GitlabGetError) as err:
        as_alice.projects.get(project["id"])

    assert as_alice.user is not None and as_alice.user.username == "alice"
    assert err.value.response_code == 403
    assert all(identity_only not in json.dumps(r.__dict__) for r in double.requests_log)


def test_note_posted_with_a_users_token_is_authored_by_that_user(
    double: GitLabDouble, project: dict[str, Any], alice: dict[str, Any]
) -> None:
    double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)
    as_alice = gitlab.Gitlab(double.url, private_token=double.issue_token(alice))
    mr = as_alice.projects.get(project["id"], lazy=True).mergerequests.get(1)

    note = mr.notes.create({"body": "mine"})

    assert note.author["username"] == "alice"
    assert double.calls("POST", r"/notes$")[0].user == "alice"


# -- git over HTTP --------------------------------------------------------------


def test_clone_and_fetch_of_mr_head_work_with_the_bot_token(
    double: GitLabDouble, project: dict[str, Any], alice: dict, tmp_path: Path
) -> None:
    opened = double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)
    checkout = tmp_path / "app"

    git("clone", "-q", double.git_url(project), str(checkout), token=double.token)
    git(
        "fetch",
        "-q",
        "origin",
        "refs/merge-requests/1/head",
        token=double.token,
        cwd=checkout,
    )

    assert (checkout / "README.md").read_text() == "hello\n"
    assert git("rev-parse", "FETCH_HEAD", cwd=checkout) == opened["sha"]
    assert double.calls("POST", r"^/team/app\.git/git-upload-pack$")


def test_git_without_credentials_gets_401_with_a_basic_challenge(
    double: GitLabDouble, project: dict[str, Any], tmp_path: Path
) -> None:
    answer = get(
        f"{double.git_url(project)}/info/refs", params={"service": "git-upload-pack"}
    )
    wrong = get(
        f"{double.git_url(project)}/info/refs",
        params={"service": "git-upload-pack"},
        auth=("oauth2", "not-a-token"),
    )

    assert answer.status_code == wrong.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="GitLab"'
    with pytest.raises(AssertionError, match="clone failed"):
        git("clone", "-q", double.git_url(project), str(tmp_path / "x"))


def test_fork_mr_head_is_fetchable_from_the_target_repository(
    double: GitLabDouble, project: dict[str, Any], alice: dict, tmp_path: Path
) -> None:
    fork = double.add_project("alice/app", bot_access=None)
    opened = double.open_mr(
        project, "fix", {"fix.txt": "fixed\n"}, author=alice, source_project=fork
    )
    checkout = tmp_path / "app"
    git("init", "-q", str(checkout))

    git(
        "fetch",
        "-q",
        double.git_url(project),
        "refs/merge-requests/1/head",
        token=double.token,
        cwd=checkout,
    )

    assert opened["source_project_id"] == fork["id"] != opened["target_project_id"]
    assert git("rev-parse", "FETCH_HEAD", cwd=checkout) == opened["sha"]
    assert git("show", "FETCH_HEAD:fix.txt", cwd=checkout) == "fixed"


def test_push_over_http_moves_the_mr_head(
    double: GitLabDouble, project: dict[str, Any], alice: dict, tmp_path: Path
) -> None:
    opened = double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)
    token = double.issue_token(alice, scopes=["write_repository"])
    checkout = tmp_path / "app"
    git(
        "clone",
        "-q",
        "-b",
        "feature",
        double.git_url(project),
        str(checkout),
        token=token,
    )
    (checkout / "a.txt").write_text("b\n")
    git(
        "-c",
        "user.name=A",
        "-c",
        "user.email=a@x",
        "commit",
        "-qam",
        "more",
        cwd=checkout,
    )

    git("push", "-q", "origin", "feature", token=token, cwd=checkout)

    head = git("rev-parse", "HEAD", cwd=checkout)
    assert double.mr(opened)["sha"] == head
    hook = double.mr_hook(opened, "update")
    assert hook["object_attributes"]["oldrev"] == opened["sha"]


# -- webhooks -----------------------------------------------------------------

MR_HOOK_KEYS = {
    "object_kind",
    "event_type",
    "user",
    "project",
    "object_attributes",
    "labels",
    "changes",
    "repository",
}
MR_ATTRIBUTE_KEYS = {
    "id", "iid", "target_project_id", "source_project_id", "source_branch",
    "target_branch", "state", "action", "draft", "work_in_progress", "last_commit",
    "url", "source", "target", "updated_at", "created_at", "title", "author_id",
    "merge_status", "detailed_merge_status", "description",
}  # fmt: skip


def test_mr_hook_for_open_has_the_documented_keys_and_no_oldrev(
    double: GitLabDouble, project: dict[str, Any], alice: dict
) -> None:
    opened = double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)

    hook = double.mr_hook(opened, "open")

    attributes = hook["object_attributes"]
    assert hook.keys() >= MR_HOOK_KEYS
    assert attributes.keys() >= MR_ATTRIBUTE_KEYS
    assert (hook["object_kind"], hook["event_type"]) == ("merge_request",) * 2
    assert attributes["action"] == "open" and "oldrev" not in attributes
    assert attributes["last_commit"]["id"] == opened["sha"]
    assert set(attributes["last_commit"]) >= {"id", "message", "timestamp", "url"}
    assert attributes["last_commit"]["author"]["email"] == "test@example.com"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", attributes["updated_at"])
    assert attributes["source"]["path_with_namespace"] == "team/app"
    assert attributes["target"]["git_http_url"] == double.git_url(project)
    assert hook["user"] == {
        "id": alice["id"],
        "name": "Alice Liddell",
        "username": "alice",
        "avatar_url": hook["user"]["avatar_url"],
        "email": "a@pub.test",
    }


def test_update_hook_carries_oldrev_only_after_a_push(
    double: GitLabDouble, project: dict[str, Any], alice: dict
) -> None:
    opened = double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)

    new_sha = double.push(opened, {"a.txt": "b\n"})
    after_push = double.mr_hook(opened, "update")
    double.set_draft(opened, True)
    after_draft = double.mr_hook(opened, "update")

    assert after_push["object_attributes"]["oldrev"] == opened["sha"]
    assert after_push["object_attributes"]["last_commit"]["id"] == new_sha
    assert "oldrev" not in after_draft["object_attributes"]
    assert after_draft["changes"]["draft"] == {"previous": False, "current": True}
    assert after_draft["object_attributes"]["draft"] is True
    assert after_draft["object_attributes"]["title"].startswith("Draft: ")


def test_fork_mr_hook_names_source_and_target_projects(
    double: GitLabDouble, project: dict[str, Any], alice: dict
) -> None:
    fork = double.add_project("alice/app", bot_access=None)
    opened = double.open_mr(
        project, "fix", {"f": "x\n"}, author=alice, source_project=fork
    )

    attributes = double.mr_hook(opened, "open")["object_attributes"]

    assert attributes["source_project_id"] == fork["id"]
    assert attributes["target_project_id"] == project["id"]
    assert attributes["source"]["path_with_namespace"] == "alice/app"
    assert attributes["target"]["path_with_namespace"] == "team/app"


def test_merge_and_close_hooks_report_state_changes(
    double: GitLabDouble, project: dict[str, Any], alice: dict
) -> None:
    first = double.open_mr(project, "one", {"1": "1\n"}, author=alice)
    second = double.open_mr(project, "two", {"2": "2\n"}, author=alice)

    merged = double.merge(first)
    double.close(second)

    merge_hook = double.mr_hook(first, "merge")
    close_hook = double.mr_hook(second, "close")
    assert merged["state"] == "merged" and merged["merge_commit_sha"]
    assert double.branch_sha(project, "main") == merged["merge_commit_sha"]
    assert merge_hook["object_attributes"]["state"] == "merged"
    assert merge_hook["changes"]["state_id"] == {"previous": 1, "current": 3}
    assert close_hook["object_attributes"]["state"] == "closed"


def test_note_hook_has_the_documented_keys(
    double: GitLabDouble, project: dict[str, Any], alice: dict
) -> None:
    opened = double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)
    note = double.add_note(opened, alice, "/review-ws start")

    hook = double.note_hook(note)
    edited = double.note_hook(double.edit_note(note, "/review-ws stop"), "update")

    attributes = hook["object_attributes"]
    assert (hook["object_kind"], hook["event_type"]) == ("note", "note")
    assert {
        "id", "note", "noteable_type", "author_id", "system", "action",
        "discussion_id", "type", "url", "created_at", "updated_at", "noteable_id",
    } <= attributes.keys()  # fmt: skip
    assert attributes["noteable_type"] == "MergeRequest"
    assert attributes["noteable_id"] == opened["id"]
    assert (attributes["action"], attributes["system"]) == ("create", False)
    assert attributes["url"].endswith(f"/-/merge_requests/1#note_{note['id']}")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", attributes["created_at"])
    assert hook["merge_request"]["iid"] == 1
    assert hook["merge_request"]["last_commit"]["id"] == opened["sha"]
    assert hook["user"]["username"] == "alice"
    assert edited["object_attributes"]["action"] == "update"
    assert edited["object_attributes"]["note"] == "/review-ws stop"


def test_delivery_carries_gitlab_headers_and_a_verifiable_signature(
    double: GitLabDouble,
    project: dict[str, Any],
    alice: dict,
    receiver: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = receiver
    opened = double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)
    secret = make_signing_secret()
    payload = double.mr_hook(opened, "open")

    first = double.deliver(url, payload, secret="tok", signing_secret=secret)
    key = received[0]["headers"]["Idempotency-Key"]
    double.deliver(url, payload, secret="tok", headers={"Idempotency-Key": key})

    assert first.status_code == 204
    headers, body = received[0]["headers"], received[0]["body"]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Gitlab-Event"] == "Merge Request Hook"
    assert headers["X-Gitlab-Token"] == "tok"
    assert headers["User-Agent"] == "GitLab/18.6.0"
    assert headers["X-Gitlab-Instance"] == double.url
    assert headers["X-Gitlab-Webhook-Uuid"] and headers["X-Gitlab-Event-Uuid"]
    assert headers["Webhook-Id"] == key
    signed = f"{key}.{headers['Webhook-Timestamp']}.".encode() + body
    hmac_key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(hmac_key, signed, hashlib.sha256).digest())
    assert headers["Webhook-Signature"] == "v1," + expected.decode()
    assert json.loads(body) == payload
    assert received[1]["headers"]["Idempotency-Key"] == key
    assert "Webhook-Signature" not in received[1]["headers"]
    assert (
        received[1]["headers"]["X-Gitlab-Webhook-Uuid"]
        != headers["X-Gitlab-Webhook-Uuid"]
    )


def test_registered_hooks_receive_subscribed_events_only(
    double: GitLabDouble,
    gl: gitlab.Gitlab,
    project: dict[str, Any],
    alice: dict,
    receiver: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = receiver
    gl.projects.get(project["id"], lazy=True).hooks.create(
        {"url": url, "token": "tok", "merge_requests_events": True}
    )
    opened = double.open_mr(project, "feature", {"a.txt": "a\n"}, author=alice)
    note = double.add_note(opened, alice, "hello")

    double.deliver_to_hooks(double.mr_hook(opened, "open"))
    double.deliver_to_hooks(double.note_hook(note))

    assert [r["headers"]["X-Gitlab-Event"] for r in received] == ["Merge Request Hook"]
    assert received[0]["headers"]["X-Gitlab-Token"] == "tok"


# -- OAuth ------------------------------------------------------------------------


def start_sign_in(
    double: GitLabDouble, scopes: str = "openid read_user"
) -> tuple[OAuth2Session, str, str]:
    """Register an app, send the "browser" to authorize; return the callback URL."""
    client_id, client_secret = double.register_oauth_app(CALLBACK)
    client = OAuth2Session(
        client_id,
        client_secret,
        scope=scopes,
        redirect_uri=CALLBACK,
        code_challenge_method="S256",
    )
    verifier = generate_token(48)
    url, _state = client.create_authorization_url(
        f"{double.url}/oauth/authorize", code_verifier=verifier
    )
    answer = get(url, allow_redirects=False)
    assert answer.status_code == 302
    return client, verifier, answer.headers["Location"]


def test_pkce_sign_in_yields_tokens_userinfo_and_a_signed_id_token(
    double: GitLabDouble, alice: dict[str, Any]
) -> None:
    double.login_as(alice)
    client, verifier, callback = start_sign_in(double)

    token = client.fetch_token(
        f"{double.url}/oauth/token",
        authorization_response=callback,
        code_verifier=verifier,
    )
    info = client.get(f"{double.url}/oauth/userinfo").json()

    assert callback.startswith(CALLBACK + "?code=")
    assert token["token_type"] == "Bearer" and token["expires_in"] == 7200
    assert token["scope"] == "openid read_user" and token["refresh_token"]
    assert info["sub"] == str(alice["id"])
    assert (info["nickname"], info["preferred_username"]) == ("alice", "alice")
    assert info["name"] == "Alice Liddell" and "groups" in info
    # Verified with the key GitLab publishes, as a relying party does.
    keys = requests.get(f"{double.url}/oauth/discovery/keys", timeout=10).json()
    verified = jwt.decode(token["id_token"], KeySet.import_key_set(keys))
    assert verified.header["alg"] == "RS256"
    assert verified.claims["sub"] == str(alice["id"])
    assert verified.claims["aud"] == client.client_id
    assert "client_secret" not in json.dumps([r.form for r in double.requests_log])


def test_reused_authorization_code_is_refused(
    double: GitLabDouble, alice: dict[str, Any]
) -> None:
    double.login_as(alice)
    client, verifier, callback = start_sign_in(double)
    token_url = f"{double.url}/oauth/token"
    client.fetch_token(
        token_url, authorization_response=callback, code_verifier=verifier
    )

    code = parse_qs(urlsplit(callback).query)["code"][0]
    again = post(
        token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
        },
        auth=(client.client_id, client.client_secret),
    )

    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_wrong_code_verifier_is_refused(
    double: GitLabDouble, alice: dict[str, Any]
) -> None:
    double.login_as(alice)
    client, _verifier, callback = start_sign_in(double)

    with pytest.raises(Exception, match="invalid_grant"):
        client.fetch_token(
            f"{double.url}/oauth/token",
            authorization_response=callback,
            code_verifier=generate_token(48),
        )


def test_refresh_rotates_tokens_and_old_access_token_stops_working(
    double: GitLabDouble, alice: dict[str, Any]
) -> None:
    double.login_as(alice)
    client, verifier, callback = start_sign_in(double)
    first = client.fetch_token(
        f"{double.url}/oauth/token",
        authorization_response=callback,
        code_verifier=verifier,
    )

    second = client.refresh_token(
        f"{double.url}/oauth/token", refresh_token=first["refresh_token"]
    )
    old = get(
        f"{double.url}/api/v4/user",
        headers={"Authorization": f"Bearer {first['access_token']}"},
    )

    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert old.status_code == 401
    double.advance_clock(7201)
    expired = get(
        f"{double.url}/api/v4/user",
        headers={"Authorization": f"Bearer {second['access_token']}"},
    )
    assert expired.status_code == 401
    assert expired.json()["error"] == "invalid_token"


def test_authorize_without_a_signed_in_user_shows_a_login_form(
    double: GitLabDouble, alice: dict[str, Any]
) -> None:
    _client_id, _secret = double.register_oauth_app(CALLBACK)
    client = OAuth2Session(
        _client_id, _secret, scope="openid read_user", redirect_uri=CALLBACK
    )
    url, state = client.create_authorization_url(f"{double.url}/oauth/authorize")

    page = get(url, allow_redirects=False)
    chosen = post(url, data={"username": "alice"}, allow_redirects=False)

    assert page.status_code == 200
    assert 'data-username="alice"' in page.text
    assert 'data-username="review-bot"' not in page.text
    assert chosen.status_code == 302
    query = parse_qs(urlsplit(chosen.headers["Location"]).query)
    assert query["state"] == [state] and query["code"]


def test_authorize_refuses_unregistered_redirect_uri_and_scope(
    double: GitLabDouble, alice: dict[str, Any]
) -> None:
    double.login_as(alice)
    client_id, _secret = double.register_oauth_app(CALLBACK)
    base = f"{double.url}/oauth/authorize"
    common = {"client_id": client_id, "response_type": "code", "state": "xyz"}

    elsewhere = get(
        base,
        params={**common, "redirect_uri": CALLBACK + "/evil"},
        allow_redirects=False,
    )
    too_much = get(
        base,
        params={**common, "redirect_uri": CALLBACK, "scope": "openid api"},
        allow_redirects=False,
    )
    unknown = get(
        base,
        params={**common, "client_id": "nope", "redirect_uri": CALLBACK},
        allow_redirects=False,
    )

    assert elsewhere.status_code == 400
    assert "Location" not in elsewhere.headers
    location = urlsplit(too_much.headers["Location"])
    assert parse_qs(location.query) == {"error": ["invalid_scope"], "state": ["xyz"]}
    assert unknown.status_code == 401


def test_discovery_document_points_at_the_double(double: GitLabDouble) -> None:
    config = get(f"{double.url}/.well-known/openid-configuration").json()

    assert config["issuer"] == double.url
    assert config["authorization_endpoint"] == f"{double.url}/oauth/authorize"
    assert config["token_endpoint"] == f"{double.url}/oauth/token"
    assert config["userinfo_endpoint"] == f"{double.url}/oauth/userinfo"
    (key,) = get(config["jwks_uri"]).json()["keys"]
    assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")
    assert "d" not in key  # the public half only
    assert {"openid", "read_user"} <= set(config["scopes_supported"])


# -- faults -----------------------------------------------------------------------


def test_injected_429_carries_retry_after_and_python_gitlab_retries(
    double: GitLabDouble, gl: gitlab.Gitlab, project: dict[str, Any]
) -> None:
    double.inject_faults(429, every=1, times=1, retry_after=0, paths=r"/projects/")
    raw = get(
        f"{double.url}/api/v4/projects/{project['id']}",
        headers={"PRIVATE-TOKEN": double.token},
    )
    double.inject_faults(429, every=1, times=1, retry_after=0, paths=r"/projects/")

    fetched = gl.projects.get(project["id"])

    assert raw.status_code == 429
    assert raw.headers["Retry-After"] == "0"
    assert raw.headers["RateLimit-Remaining"] == "0"
    assert fetched.id == project["id"]
    statuses = [(r.status, r.faulted) for r in double.calls("GET", r"/projects/")]
    assert statuses == [(429, True), (429, True), (200, False)]


def test_every_nth_fault_is_deterministic(
    double: GitLabDouble, project: dict[str, Any]
) -> None:
    double.inject_faults(503, every=3, retry_after=2)
    url = f"{double.url}/api/v4/projects/{project['id']}"

    codes = [
        get(url, headers={"PRIVATE-TOKEN": double.token}).status_code for _ in range(6)
    ]
    double.clear_faults()

    assert codes == [503, 200, 200, 503, 200, 200]
    assert get(url, headers={"PRIVATE-TOKEN": double.token}).ok


def test_unreachable_double_refuses_connections_until_restored(
    double: GitLabDouble, project: dict[str, Any]
) -> None:
    url = f"{double.url}/api/v4/projects/{project['id']}"
    headers = {"PRIVATE-TOKEN": double.token}

    double.set_unreachable(True)
    with pytest.raises(requests.ConnectionError):
        get(url, headers=headers, timeout=5)
    double.set_unreachable(False)

    assert get(url, headers=headers, timeout=5).status_code == 200


def test_request_log_never_holds_the_token(
    double: GitLabDouble, gl: gitlab.Gitlab, project: dict[str, Any], tmp_path: Path
) -> None:
    gl.projects.get(project["id"])
    git("clone", "-q", double.git_url(project), str(tmp_path / "c"), token=double.token)

    logged = json.dumps([r.__dict__ for r in double.requests_log], default=str)

    assert double.token not in logged
    assert len(double.requests_log) >= 3


def test_reporter_can_read_but_not_register_hooks(
    double: GitLabDouble, project: dict[str, Any]
) -> None:
    dave = double.add_user("dave")
    double.set_member(project, dave, REPORTER)
    as_dave = gitlab.Gitlab(double.url, private_token=double.issue_token(dave))
    remote = as_dave.projects.get(project["id"])

    with pytest.raises(gitlab.GitlabCreateError) as err:
        remote.hooks.create({"url": "http://127.0.0.1:9/hook"})

    assert err.value.response_code == 403
