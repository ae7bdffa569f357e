"""REST handlers for users, SSH keys, projects, members and merge requests.

docs.gitlab.com/api/users, /api/projects, /api/members, /api/merge_requests.
"""

from __future__ import annotations

from flask import Response, jsonify

from tests.gitlab_double import shapes
from tests.gitlab_double.api import (
    ApiError,
    Call,
    not_found,
    paginate,
    route,
    sort_records,
)
from tests.gitlab_double.state import MergeRequest, User

MR_STATES = {"opened", "closed", "merged", "locked", "all"}


def _user(call: Call) -> User:
    user = call.store.users.get(call.int_arg("user_id"))
    if user is None:
        raise not_found("User Not Found")
    return user


@route("GET", "user")
def current_user(call: Call) -> Response:
    return jsonify(shapes.user_self(call.store, call.user))


@route("GET", "personal_access_tokens/self")
def current_token(call: Call) -> Response:
    """The token the request came with. Any scope may ask (see ``SELF_SCOPES``);
    OAuth tokens are refused as GitLab refuses them."""
    if call.token.client_id is not None:
        raise ApiError(
            400,
            {
                "message": "400 Bad request - This endpoint requires token type "
                "to be a personal access token"
            },
        )
    return jsonify(shapes.personal_access_token(call.store, call.token))


@route("GET", "users")
def list_users(call: Call) -> Response:
    """``GET /users?username=`` finds one user by name, case-insensitively
    (docs.gitlab.com/api/users, "For non-administrator users")."""
    wanted = str(call.params.get("username", "")).lower()
    found = [
        shapes.user_public(call.store, u)
        for u in call.store.users.values()
        if not wanted or u.username.lower() == wanted
    ]
    return paginate(call, found)


@route("GET", "users/{user_id}")
def get_user(call: Call) -> Response:
    return jsonify(shapes.user_public(call.store, _user(call)))


@route("GET", "users/{user_id}/keys")
def list_user_keys(call: Call) -> Response:
    return paginate(call, [shapes.ssh_key(k) for k in _user(call).keys])


@route("GET", "user/keys")
def list_own_keys(call: Call) -> Response:
    return paginate(call, [shapes.ssh_key(k) for k in call.user.keys])


@route("GET", "projects/{project}")
def get_project(call: Call) -> Response:
    project = call.project()
    body = shapes.project(call.store, project)
    level = call.store.access_level(project, call.user)
    body["permissions"] = {
        "project_access": {"access_level": level, "notification_level": 3}
        if level
        else None,
        "group_access": None,
    }
    return jsonify(body)


@route("GET", "projects/{project}/members/all")
def list_members_all(call: Call) -> Response:
    project = call.project()
    query = (call.string("query") or "").lower()
    rows = []
    for (project_id, user_id), member in sorted(call.store.members.items()):
        user = call.store.users[user_id]
        if project_id != project.id:
            continue
        if query and query not in user.username.lower() + user.name.lower():
            continue
        rows.append(shapes.member(call.store, user, member))
    return paginate(call, rows)


@route("GET", "projects/{project}/members/all/{user_id}")
def get_member_all(call: Call) -> Response:
    project = call.project()
    user_id = call.int_arg("user_id")
    member = call.store.members.get((project.id, user_id))
    if member is None:
        raise not_found()
    return jsonify(shapes.member(call.store, call.store.users[user_id], member))


def find_mr(call: Call) -> MergeRequest:
    """The route's MR in a project the caller may read (404 otherwise)."""
    project = call.project()
    found = call.store.mrs.get((project.id, call.int_arg("merge_request_iid")))
    if found is None:
        raise not_found()
    return found


@route("GET", "projects/{project}/merge_requests")
def list_mrs(call: Call) -> Response:
    project = call.project()
    state = call.choice("state", MR_STATES, "all")
    source = call.string("source_branch")
    target = call.string("target_branch")
    author_id = call.integer("author_id")
    wip = call.choice("wip", {"yes", "no"}, None)

    matching = []
    for mr in call.store.mrs.values():
        if mr.project_id != project.id:
            continue
        if state != "all" and mr.state != state:
            continue
        if source and mr.source_branch != source:
            continue
        if target and mr.target_branch != target:
            continue
        if author_id and mr.author_id != author_id:
            continue
        if wip and mr.draft != (wip == "yes"):
            continue
        matching.append(mr)

    ordered = sort_records(call, matching, {"created_at", "updated_at"}, "created_at")
    return paginate(call, ordered, lambda mr: shapes.mr(call.store, mr))


@route("GET", "projects/{project}/merge_requests/{merge_request_iid}")
def get_mr(call: Call) -> Response:
    return jsonify(shapes.mr(call.store, find_mr(call)))
