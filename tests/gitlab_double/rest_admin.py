"""REST handlers for project hooks, environments and deployments.

docs.gitlab.com/api/project_webhooks, /api/environments, /api/deployments.
Hooks need Maintainer, environments and deployments Developer. Hook secrets
(``token``, ``signing_token``) are write-only: answers only say whether one is
set. The double does not refuse loopback hook URLs, although GitLab blocks
requests to the local network unless an admin allows them.
"""

from __future__ import annotations

import re
import secrets
import string
from typing import Any

from flask import Response, jsonify

from tests.gitlab_double import shapes
from tests.gitlab_double.api import (
    ApiError,
    Call,
    bad_param,
    created,
    forbidden,
    no_content,
    not_found,
    paginate,
    route,
    sort_records,
)
from tests.gitlab_double.state import (
    DEVELOPER,
    MAINTAINER,
    Deployment,
    Environment,
    Hook,
    Project,
)

HOOK_EVENTS = {
    "push_events": True,
    "issues_events": False,
    "confidential_issues_events": False,
    "merge_requests_events": False,
    "tag_push_events": False,
    "note_events": False,
    "confidential_note_events": False,
    "job_events": False,
    "pipeline_events": False,
    "wiki_page_events": False,
    "deployment_events": False,
    "feature_flag_events": False,
    "releases_events": False,
    "milestone_events": False,
    "emoji_events": False,
    "resource_access_token_events": False,
    "vulnerability_events": False,
    "repository_update_events": False,
    "enable_ssl_verification": True,
}
HOOK_TEXT = {
    "name": "",
    "description": "",
    "push_events_branch_filter": "",
    "branch_filter_strategy": "wildcard",
    "custom_webhook_template": None,
}
#: GitLab's ``Gitlab::Regex.environment_name_regex``.
ENVIRONMENT_NAME = re.compile(
    r"[A-Za-z0-9 _.${}-]([A-Za-z0-9 _./${}-]*[A-Za-z0-9 _.${}-])?"
)
DEPLOYMENT_STATUSES = {"created", "running", "success", "failed", "canceled", "blocked"}
TIERS = {"production", "staging", "testing", "development", "other"}


def hook_settings(call: Call, current: dict[str, Any]) -> dict[str, Any]:
    """Validated hook fields from the request, on top of ``current``."""
    settings = dict(current)
    for name in HOOK_EVENTS:
        value = call.boolean(name)
        if value is not None:
            settings[name] = value
    for name in HOOK_TEXT:
        text = call.string(name)
        if text is not None:
            settings[name] = text
    headers = call.params.get("custom_headers")
    if headers is not None:
        if not isinstance(headers, list) or not all(
            isinstance(h, dict) and "key" in h for h in headers
        ):
            raise bad_param("custom_headers")
        settings["custom_headers"] = headers

    return settings


def hook_url(call: Call) -> str:
    url = call.string("url", required=True) or ""
    if not re.match(r"^https?://[^\s/]+", url):
        reason = "is blocked: Only allowed schemes are http, https"
        raise ApiError(422, {"message": {"url": [reason]}})
    return url


def find_hook(call: Call, project: Project) -> Hook:
    hook = call.store.hooks.get(call.int_arg("hook_id"))
    if hook is None or hook.project_id != project.id:
        raise not_found()
    return hook


@route("GET", "projects/{project}/hooks")
def list_hooks(call: Call) -> Response:
    project = call.project(min_level=MAINTAINER)
    hooks = [h for h in call.store.hooks.values() if h.project_id == project.id]
    return paginate(call, [shapes.hook(h) for h in hooks])


@route("GET", "projects/{project}/hooks/{hook_id}")
def get_hook(call: Call) -> Response:
    project = call.project(min_level=MAINTAINER)
    return jsonify(shapes.hook(find_hook(call, project)))


@route("POST", "projects/{project}/hooks")
def create_hook(call: Call) -> Response:
    project = call.project(min_level=MAINTAINER)
    url = hook_url(call)
    defaults: dict[str, Any] = {**HOOK_EVENTS, **HOOK_TEXT, "custom_headers": []}
    settings = hook_settings(call, defaults)

    hook = Hook(
        id=call.store.next_id(),
        project_id=project.id,
        url=url,
        token=call.string("token") or None,
        signing_token=call.string("signing_token") or None,
        settings=settings,
        created_at=call.store.now(),
    )
    call.store.hooks[hook.id] = hook
    return created(shapes.hook(hook))


@route("PUT", "projects/{project}/hooks/{hook_id}")
def update_hook(call: Call) -> Response:
    project = call.project(min_level=MAINTAINER)
    hook = find_hook(call, project)
    hook.url = hook_url(call)
    hook.settings = hook_settings(call, hook.settings)
    if "token" in call.params:
        hook.token = call.string("token") or None
    if "signing_token" in call.params:
        hook.signing_token = call.string("signing_token") or None
    return jsonify(shapes.hook(hook))


@route("DELETE", "projects/{project}/hooks/{hook_id}")
def delete_hook(call: Call) -> Response:
    project = call.project(min_level=MAINTAINER)
    del call.store.hooks[find_hook(call, project).id]
    return no_content()


def slugify(name: str) -> str:
    """``CI_ENVIRONMENT_SLUG``-like: DNS-safe, 24 chars, suffixed when altered."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:24].strip("-")
    if slug != name or len(name) > 24:
        alphabet = string.ascii_lowercase + string.digits
        slug = (
            slug[:17].strip("-")
            + "-"
            + "".join(secrets.choice(alphabet) for _ in range(6))
        )
    return slug


def guess_tier(name: str) -> str:
    lowered = name.lower()
    for tier, words in [
        ("production", ("prod", "live")),
        ("staging", ("stag", "model", "pre")),
        ("testing", ("test", "qc", "qa")),
        ("development", ("dev", "review", "trunk")),
    ]:
        if any(word in lowered for word in words):
            return tier
    return "other"


def last_deployment(call: Call, env: Environment) -> Deployment | None:
    deployments = [
        d for d in call.store.deployments.values() if d.environment_id == env.id
    ]
    return max(deployments, key=lambda d: d.id, default=None)


def env_json(call: Call, env: Environment) -> dict[str, Any]:
    return shapes.environment(call.store, env, last_deployment(call, env))


def find_env(call: Call, project: Project) -> Environment:
    env = call.store.environments.get(call.int_arg("environment_id"))
    if env is None or env.project_id != project.id:
        raise not_found()
    return env


def new_environment(call: Call, project: Project, name: str) -> Environment:
    if len(name) > 255 or not ENVIRONMENT_NAME.fullmatch(name):
        message = (
            "can contain only letters, digits, '-', '_', '/', '$', '{', '}', '.', "
            "and spaces, but it cannot start or end with '/'"
        )
        raise ApiError(400, {"message": {"name": [message]}})
    taken = any(
        e.project_id == project.id and e.name == name
        for e in call.store.environments.values()
    )
    if taken:
        raise ApiError(400, {"message": {"name": ["has already been taken"]}})
    now = call.store.now()
    env = Environment(
        id=call.store.next_id(),
        project_id=project.id,
        name=name,
        slug=slugify(name),
        external_url=None,
        tier=guess_tier(name),
        description=None,
        created_at=now,
        updated_at=now,
    )
    call.store.environments[env.id] = env
    return env


def apply_env_fields(call: Call, env: Environment) -> None:
    external_url = call.string("external_url")
    if external_url is not None:
        if external_url and not re.match(r"^https?://", external_url):
            raise ApiError(400, {"message": {"external_url": ["is blocked"]}})
        env.external_url = external_url or None
    env.tier = call.choice("tier", TIERS, env.tier) or env.tier
    description = call.string("description")
    if description is not None:
        env.description = description
    env.updated_at = call.store.now()


@route("GET", "projects/{project}/environments")
def list_environments(call: Call) -> Response:
    project = call.project()
    name = call.string("name")
    search = call.string("search")
    states = call.choice("states", {"available", "stopping", "stopped"}, None)
    rows = [
        env_json(call, e)
        for e in call.store.environments.values()
        if e.project_id == project.id
        and (name is None or e.name == name)
        and (search is None or search in e.name)
        and (states is None or e.state == states)
    ]
    return paginate(call, rows)


@route("GET", "projects/{project}/environments/{environment_id}")
def get_environment(call: Call) -> Response:
    return jsonify(env_json(call, find_env(call, call.project())))


@route("POST", "projects/{project}/environments")
def create_environment(call: Call) -> Response:
    project = call.project(min_level=DEVELOPER)
    env = new_environment(call, project, call.string("name", required=True) or "")
    apply_env_fields(call, env)
    return created(env_json(call, env))


@route("PUT", "projects/{project}/environments/{environment_id}")
def update_environment(call: Call) -> Response:
    env = find_env(call, call.project(min_level=DEVELOPER))
    apply_env_fields(call, env)
    return jsonify(env_json(call, env))


@route("POST", "projects/{project}/environments/{environment_id}/stop")
def stop_environment(call: Call) -> Response:
    env = find_env(call, call.project(min_level=DEVELOPER))
    env.state = "stopped"
    env.updated_at = call.store.now()
    # GitLab answers the stop with 200 and the environment, not 201.
    return jsonify(env_json(call, env))


@route("DELETE", "projects/{project}/environments/{environment_id}")
def delete_environment(call: Call) -> Response:
    env = find_env(call, call.project(min_level=DEVELOPER))
    if env.state != "stopped":
        raise forbidden()

    del call.store.environments[env.id]
    for deployment_id in [
        d.id for d in call.store.deployments.values() if d.environment_id == env.id
    ]:
        del call.store.deployments[deployment_id]
    return no_content()


def find_deployment(call: Call, project: Project) -> Deployment:
    deployment = call.store.deployments.get(call.int_arg("deployment_id"))
    if deployment is None or deployment.project_id != project.id:
        raise not_found()
    return deployment


def commit_exists(call: Call, project: Project, revision: str) -> bool:
    """What GitLab's ``project.commit(revision)`` finds: a branch, tag, full ref
    such as ``refs/merge-requests/1/head``, or sha of the project's repository."""
    if not revision or revision.startswith("-"):
        return False
    repo = call.store.repos.path(project.path_with_namespace)

    return call.store.repos.resolve(repo, revision) is not None


@route("GET", "projects/{project}/deployments")
def list_deployments(call: Call) -> Response:
    project = call.project()
    env_name = call.string("environment")
    status = call.choice("status", DEPLOYMENT_STATUSES, None)
    matching = [
        d
        for d in call.store.deployments.values()
        if d.project_id == project.id
        and (status is None or d.status == status)
        and (
            env_name is None
            or call.store.environments[d.environment_id].name == env_name
        )
    ]
    ordered = sort_records(
        call, matching, {"id", "iid", "created_at", "updated_at"}, "id"
    )
    if call.string("sort") is None:
        ordered.reverse()  # docs: ``sort`` defaults to ``asc`` for deployments
    return paginate(call, [shapes.deployment(call.store, d) for d in ordered])


@route("GET", "projects/{project}/deployments/{deployment_id}")
def get_deployment(call: Call) -> Response:
    deployment = find_deployment(call, call.project())
    return jsonify(shapes.deployment(call.store, deployment))


@route("POST", "projects/{project}/deployments")
def create_deployment(call: Call) -> Response:
    project = call.project(min_level=DEVELOPER)
    env_name = call.string("environment", required=True) or ""
    sha = call.string("sha", required=True) or ""
    ref = call.string("ref", required=True) or ""
    tag = call.boolean("tag")
    if tag is None:
        raise bad_param("tag", "is missing")
    status = call.choice("status", DEPLOYMENT_STATUSES, None)
    if status is None:
        raise bad_param("status", "is missing")
    # Like GitLab's API: the ref must name a commit of this project's own
    # repository (a fork's branch does not), checked before anything is made.
    if not commit_exists(call, project, ref):
        raise ApiError(400, {"message": {"ref": ["The branch or tag does not exist"]}})

    env = next(
        (
            e
            for e in call.store.environments.values()
            if e.project_id == project.id and e.name == env_name
        ),
        None,
    ) or new_environment(call, project, env_name)
    # The deployment's own validation, after the environment was made.
    if not commit_exists(call, project, sha):
        raise ApiError(400, {"message": {"sha": ["The commit does not exist"]}})
    env.state = "available"
    now = call.store.now()
    iid = 1 + sum(d.project_id == project.id for d in call.store.deployments.values())
    deployment = Deployment(
        id=call.store.next_id(),
        iid=iid,
        project_id=project.id,
        environment_id=env.id,
        ref=ref,
        sha=sha,
        tag=tag,
        status=status,
        user_id=call.user.id,
        created_at=now,
        updated_at=now,
    )
    call.store.deployments[deployment.id] = deployment
    return created(shapes.deployment(call.store, deployment))


@route("PUT", "projects/{project}/deployments/{deployment_id}")
def update_deployment(call: Call) -> Response:
    deployment = find_deployment(call, call.project(min_level=DEVELOPER))
    status = call.choice("status", DEPLOYMENT_STATUSES, None)
    if status is None:
        raise bad_param("status", "is missing")

    deployment.status = status
    deployment.updated_at = call.store.now()
    return jsonify(shapes.deployment(call.store, deployment))
