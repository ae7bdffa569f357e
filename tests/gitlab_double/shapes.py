"""REST API JSON shapes, as docs.gitlab.com/api documents them.

Pure functions from records to dicts. Fields GitLab has but the double cannot
give a meaning (pipelines, time tracking, milestones) are present with the
empty value GitLab uses for them, so clients that read them do not break.
Callers hold ``store.lock``.
"""

from __future__ import annotations

from typing import Any

from tests.gitlab_double.state import (
    AccessToken,
    AwardEmoji,
    Deployment,
    Discussion,
    Environment,
    Hook,
    Member,
    MergeRequest,
    Note,
    Project,
    Store,
    User,
    api_time,
)


def user_basic(store: Store, user: User) -> dict[str, Any]:
    """The short user object embedded as ``author``, ``user`` and the like."""
    return {
        "id": user.id,
        "username": user.username,
        "public_email": user.public_email,
        "name": user.name,
        "state": user.state,
        "locked": user.state == "blocked",
        "avatar_url": f"{store.url}/uploads/-/system/user/avatar/{user.id}/a.png",
        "web_url": f"{store.url}/{user.username}",
    }


def user_public(store: Store, user: User) -> dict[str, Any]:
    """``GET /users/:id``: what anyone may see of a user."""
    return {
        **user_basic(store, user),
        "created_at": api_time(user.created_at),
        "bio": "",
        "location": "",
        "linkedin": "",
        "twitter": "",
        "website_url": "",
        "organization": "",
        "job_title": "",
        "pronouns": None,
        "bot": user.bot,
        "work_information": None,
        "followers": 0,
        "following": 0,
        "local_time": None,
        "is_followed": False,
    }


def user_self(store: Store, user: User) -> dict[str, Any]:
    """``GET /user``: the authenticated user sees their own private fields."""
    return {
        **user_public(store, user),
        "email": user.email,
        "commit_email": user.commit_email or user.email,
        "last_sign_in_at": None,
        "confirmed_at": api_time(user.created_at),
        "last_activity_on": None,
        "theme_id": 1,
        "color_scheme_id": 1,
        "projects_limit": 100000,
        "current_sign_in_at": None,
        "identities": [],
        "can_create_group": True,
        "can_create_project": True,
        "two_factor_enabled": False,
        "external": False,
        "private_profile": False,
        "is_admin": False,
    }


def project(store: Store, record: Project) -> dict[str, Any]:
    web_url = f"{store.url}/{record.path_with_namespace}"
    namespace = record.namespace_path
    return {
        "id": record.id,
        "description": "",
        "name": record.name,
        "name_with_namespace": record.path_with_namespace.replace("/", " / "),
        "path": record.name,
        "path_with_namespace": record.path_with_namespace,
        "created_at": api_time(record.created_at),
        "default_branch": record.default_branch,
        "tag_list": [],
        "topics": [],
        "ssh_url_to_repo": f"git@127.0.0.1:{record.path_with_namespace}.git",
        "http_url_to_repo": f"{web_url}.git",
        "web_url": web_url,
        "readme_url": f"{web_url}/-/blob/{record.default_branch}/README.md",
        "avatar_url": None,
        "forks_count": 0,
        "star_count": 0,
        "last_activity_at": api_time(record.created_at),
        "namespace": {
            "id": sum(map(ord, namespace)),
            "name": namespace.rsplit("/", 1)[-1],
            "path": namespace.rsplit("/", 1)[-1],
            "kind": "group",
            "full_path": namespace,
            "parent_id": None,
            "avatar_url": None,
            "web_url": f"{store.url}/groups/{namespace}",
        },
        "visibility": record.visibility,
        "archived": False,
        "empty_repo": False,
        "merge_requests_enabled": True,
        "merge_method": "merge",
        "ci_config_path": None,
    }


def mr(store: Store, record: MergeRequest) -> dict[str, Any]:
    """``GET /projects/:id/merge_requests/:iid`` (the single-MR shape)."""
    target = store.projects[record.project_id]
    author = user_basic(store, store.users[record.author_id])
    merged_by = store.users.get(record.merged_by_id or 0)
    closed_by = store.users.get(record.closed_by_id or 0)
    notes = [n for n in store.mr_notes(record) if not n.system]
    return {
        "id": record.id,
        "iid": record.iid,
        "project_id": record.project_id,
        "title": record.title,
        "description": record.description,
        "state": record.state,
        "created_at": api_time(record.created_at),
        "updated_at": api_time(record.updated_at),
        "merged_by": user_basic(store, merged_by) if merged_by else None,
        "merge_user": user_basic(store, merged_by) if merged_by else None,
        "merged_at": api_time(record.merged_at),
        "closed_by": user_basic(store, closed_by) if closed_by else None,
        "closed_at": api_time(record.closed_at),
        "target_branch": record.target_branch,
        "source_branch": record.source_branch,
        "user_notes_count": len(notes),
        "upvotes": 0,
        "downvotes": 0,
        "author": author,
        "assignees": [],
        "assignee": None,
        "reviewers": [],
        "source_project_id": record.source_project_id,
        "target_project_id": record.project_id,
        "labels": [],
        "draft": record.draft,
        "work_in_progress": record.draft,
        "milestone": None,
        "merge_when_pipeline_succeeds": False,
        "merge_status": "can_be_merged",
        "detailed_merge_status": "draft_status" if record.draft else "mergeable",
        "sha": record.sha,
        "merge_commit_sha": record.merge_commit_sha,
        "squash_commit_sha": None,
        "discussion_locked": None,
        "should_remove_source_branch": None,
        "force_remove_source_branch": False,
        "prepared_at": api_time(record.created_at),
        "reference": f"!{record.iid}",
        "references": {
            "short": f"!{record.iid}",
            "relative": f"!{record.iid}",
            "full": f"{target.path_with_namespace}!{record.iid}",
        },
        "web_url": mr_web_url(store, record),
        "time_stats": {
            "time_estimate": 0,
            "total_time_spent": 0,
            "human_time_estimate": None,
            "human_total_time_spent": None,
        },
        "squash": False,
        "squash_on_merge": False,
        "task_completion_status": {"count": 0, "completed_count": 0},
        "has_conflicts": False,
        "blocking_discussions_resolved": True,
        "subscribed": False,
        "changes_count": None,
        "first_contribution": False,
        "diff_refs": {
            "base_sha": record.base_sha,
            "head_sha": record.sha,
            "start_sha": record.start_sha,
        },
        "head_pipeline": None,
        "pipeline": None,
        "user": {"can_merge": True},
    }


def mr_web_url(store: Store, record: MergeRequest) -> str:
    path = store.projects[record.project_id].path_with_namespace
    return f"{store.url}/{path}/-/merge_requests/{record.iid}"


def note(store: Store, record: Note) -> dict[str, Any]:
    return {
        "id": record.id,
        "type": record.type,
        "body": record.body,
        "attachment": None,
        "author": user_basic(store, store.users[record.author_id]),
        "created_at": api_time(record.created_at),
        "updated_at": api_time(record.updated_at),
        "system": record.system,
        "noteable_id": record.noteable_id,
        "noteable_type": "MergeRequest",
        "project_id": record.project_id,
        "noteable_iid": record.mr_iid,
        "resolvable": False,
        "confidential": record.internal,
        "internal": record.internal,
        "imported": False,
        "imported_from": "none",
        "commands_changes": {},
    }


def discussion(store: Store, record: Discussion) -> dict[str, Any]:
    return {
        "id": record.id,
        "individual_note": record.individual_note,
        "notes": [note(store, store.notes[i]) for i in record.note_ids],
    }


def award_emoji(store: Store, record: AwardEmoji) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "user": user_basic(store, store.users[record.user_id]),
        "created_at": api_time(record.created_at),
        "updated_at": api_time(record.created_at),
        "awardable_id": record.note_id,
        "awardable_type": "Note",
    }


def member(store: Store, user: User, record: Member) -> dict[str, Any]:
    return {
        **user_basic(store, user),
        "access_level": record.access_level,
        "created_at": api_time(record.created_at),
        "created_by": None,
        "expires_at": record.expires_at,
        "group_saml_identity": None,
        "membership_state": "active",
    }


def ssh_key(key: dict[str, Any]) -> dict[str, Any]:
    return dict(key)


def personal_access_token(store: Store, token: AccessToken) -> dict[str, Any]:
    """``GET /personal_access_tokens/self`` (docs.gitlab.com/api/personal_access_tokens,
    "Using a request header"); project and group access tokens answer the same."""
    expired = token.expires_at is not None and token.expires_at <= store.now()
    return {
        "id": token.id,
        "name": token.name,
        "revoked": token.revoked,
        "created_at": api_time(token.created_at),
        "description": None,
        "scopes": list(token.scopes),
        "user_id": token.user_id,
        "last_used_at": None,
        "active": not token.revoked and not expired,
        "expires_at": token.expires_at.date().isoformat() if token.expires_at else None,
        "last_used_ips": [],
    }


def hook(record: Hook) -> dict[str, Any]:
    """Project hook: secrets are write-only, only their presence is shown."""
    settings = dict(record.settings)
    headers = settings.pop("custom_headers", [])
    return {
        "id": record.id,
        "url": record.url,
        "project_id": record.project_id,
        "created_at": api_time(record.created_at),
        **settings,
        "custom_headers": [{"key": h["key"]} for h in headers],
        "token_present": bool(record.token),
        "signing_token_present": bool(record.signing_token),
        "alert_status": record.alert_status,
        "disabled_until": (
            api_time(record.disabled_until) if record.disabled_until else None
        ),
    }


def environment(
    store: Store, record: Environment, last: Deployment | None = None
) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "slug": record.slug,
        "description": record.description,
        "external_url": record.external_url,
        "state": record.state,
        "tier": record.tier,
        "created_at": api_time(record.created_at),
        "updated_at": api_time(record.updated_at),
        "auto_stop_at": None,
        "auto_stop_setting": "always",
        "kubernetes_namespace": None,
        "flux_resource_path": None,
        "cluster_agent": None,
        "last_deployment": deployment(store, last, nested=True) if last else None,
    }


def deployment(
    store: Store, record: Deployment, *, nested: bool = False
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": record.id,
        "iid": record.iid,
        "ref": record.ref,
        "sha": record.sha,
        "status": record.status,
        "created_at": api_time(record.created_at),
        "updated_at": api_time(record.updated_at),
        "user": user_basic(store, store.users[record.user_id]),
        "deployable": None,
    }
    if not nested:
        env = store.environments[record.environment_id]
        body["environment"] = environment(store, env)
    return body
