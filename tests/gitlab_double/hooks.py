"""Webhook payloads and deliveries, as GitLab sends them.

Payload shapes follow docs.gitlab.com/user/project/integrations/webhook_events
("Merge request events", "Comment on a merge request"), including their two
timestamp styles. Delivery headers follow .../integrations/webhooks; the
optional signature follows the Standard Webhooks spec
(github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md),
which GitLab's signing token implements.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from typing import Any

import requests

from tests.gitlab_double import shapes
from tests.gitlab_double.state import (
    STATE_IDS,
    MergeRequest,
    Note,
    Project,
    Store,
    User,
    hook_time,
    hook_utc,
)

USER_AGENT = "GitLab/18.6.0"
EVENT_HEADERS = {
    "merge_request": "Merge Request Hook",
    "note": "Note Hook",
    "push": "Push Hook",
    "emoji": "Emoji Hook",
    "deployment": "Deployment Hook",
}
VISIBILITY_LEVELS = {"private": 0, "internal": 10, "public": 20}


def make_signing_secret() -> str:
    """A signing token in GitLab's format: ``whsec_`` + base64 of 32 bytes."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one delivery (``v1,<base64>``)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def hook_user(store: Store, user: User) -> dict[str, Any]:
    """``user``: the e-mail is ``[REDACTED]`` unless the user made one public."""
    basic = shapes.user_basic(store, user)
    return {
        "id": user.id,
        "name": user.name,
        "username": user.username,
        "avatar_url": basic["avatar_url"],
        "email": user.public_email or "[REDACTED]",
    }


def hook_project(store: Store, project: Project) -> dict[str, Any]:
    web_url = f"{store.url}/{project.path_with_namespace}"
    ssh_url = f"git@127.0.0.1:{project.path_with_namespace}.git"
    return {
        "id": project.id,
        "name": project.name,
        "description": "",
        "web_url": web_url,
        "avatar_url": None,
        "git_ssh_url": ssh_url,
        "git_http_url": f"{web_url}.git",
        "namespace": project.namespace_path.rsplit("/", 1)[-1],
        "visibility_level": VISIBILITY_LEVELS[project.visibility],
        "path_with_namespace": project.path_with_namespace,
        "default_branch": project.default_branch,
        "ci_config_path": None,
        "homepage": web_url,
        "url": f"{web_url}.git",
        "ssh_url": ssh_url,
        "http_url": f"{web_url}.git",
    }


def hook_repository(store: Store, project: Project) -> dict[str, Any]:
    web_url = f"{store.url}/{project.path_with_namespace}"
    return {
        "name": project.name,
        "url": f"{web_url}.git",
        "description": "",
        "homepage": web_url,
    }


def last_commit(store: Store, mr: MergeRequest) -> dict[str, Any]:
    project = store.projects[mr.project_id]
    repo = store.repos.path(project.path_with_namespace)
    fields = store.repos.show(repo, mr.sha, "%B%x00%aI%x00%an%x00%ae")
    message, timestamp, name, email = fields.split("\x00")
    web_url = f"{store.url}/{project.path_with_namespace}"
    return {
        "id": mr.sha,
        "message": message.strip() + "\n",
        "title": message.strip().splitlines()[0],
        "timestamp": timestamp,
        "url": f"{web_url}/-/commit/{mr.sha}",
        "author": {"name": name, "email": email},
    }


def mr_attributes(
    store: Store, mr: MergeRequest, stamp: Any = hook_time
) -> dict[str, Any]:
    """The merge request as webhooks describe it (``object_attributes``)."""
    source = store.projects[mr.source_project_id]
    target = store.projects[mr.project_id]
    return {
        "id": mr.id,
        "iid": mr.iid,
        "target_branch": mr.target_branch,
        "source_branch": mr.source_branch,
        "source_project_id": mr.source_project_id,
        "author_id": mr.author_id,
        "assignee_ids": [],
        "assignee_id": None,
        "reviewer_ids": [],
        "title": mr.title,
        "created_at": stamp(mr.created_at),
        "updated_at": stamp(mr.updated_at),
        "last_edited_at": None,
        "last_edited_by_id": None,
        "milestone_id": None,
        "state_id": STATE_IDS[mr.state],
        "state": mr.state,
        "blocking_discussions_resolved": True,
        "work_in_progress": mr.draft,
        "draft": mr.draft,
        "first_contribution": False,
        "merge_status": "can_be_merged",
        "target_project_id": mr.project_id,
        "description": mr.description,
        "prepared_at": stamp(mr.created_at),
        "total_time_spent": 0,
        "time_change": 0,
        "human_total_time_spent": None,
        "human_time_change": None,
        "human_time_estimate": None,
        "url": shapes.mr_web_url(store, mr),
        "source": hook_project(store, source),
        "target": hook_project(store, target),
        "last_commit": last_commit(store, mr),
        "labels": [],
        "merge_commit_sha": mr.merge_commit_sha,
        "head_pipeline_id": None,
        "detailed_merge_status": "draft_status" if mr.draft else "mergeable",
    }


def mr_hook(store: Store, mr: MergeRequest, action: str, actor: User) -> dict[str, Any]:
    """A Merge Request Hook body; ``oldrev`` only on ``update`` after a push."""
    target = store.projects[mr.project_id]
    attributes = mr_attributes(store, mr)
    attributes["action"] = action
    if action == "update" and mr.oldrev:
        attributes["oldrev"] = mr.oldrev
    changes = dict(mr.changes)
    if action == "open":
        changes = {
            "id": {"previous": None, "current": mr.id},
            "iid": {"previous": None, "current": mr.iid},
            "title": {"previous": None, "current": mr.title},
            "state_id": {"previous": None, "current": STATE_IDS[mr.state]},
        }
    return {
        "object_kind": "merge_request",
        "event_type": "merge_request",
        "user": hook_user(store, actor),
        "project": hook_project(store, target),
        "object_attributes": attributes,
        "labels": [],
        "changes": changes,
        "repository": hook_repository(store, target),
        "assignees": [],
        "reviewers": [],
    }


def note_hook(store: Store, note: Note, action: str) -> dict[str, Any]:
    """A Note Hook body for a comment on a merge request."""
    mr = store.mrs[(note.project_id, note.mr_iid)]
    project = store.projects[note.project_id]
    author = store.users[note.author_id]
    note_url = f"{shapes.mr_web_url(store, mr)}#note_{note.id}"
    merge_request = mr_attributes(store, mr, stamp=hook_utc)
    return {
        "object_kind": "note",
        "event_type": "confidential_note" if note.internal else "note",
        "user": hook_user(store, author),
        "project_id": project.id,
        "project": hook_project(store, project),
        "repository": hook_repository(store, project),
        "object_attributes": {
            "id": note.id,
            "note": note.body,
            "noteable_type": "MergeRequest",
            "author_id": note.author_id,
            "created_at": hook_utc(note.created_at),
            "updated_at": hook_utc(note.updated_at),
            "project_id": project.id,
            "attachment": None,
            "line_code": None,
            "commit_id": "",
            "noteable_id": mr.id,
            "system": note.system,
            "st_diff": None,
            "action": action,
            "url": note_url,
            "discussion_id": note.discussion_id,
            "type": note.type,
            "internal": note.internal,
            "confidential": note.internal,
        },
        "merge_request": merge_request,
    }


def deliver(
    store_url: str,
    target_url: str,
    payload: dict[str, Any],
    *,
    secret: str | None,
    event: str | None = None,
    signing_secret: str | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """POST ``payload`` to ``target_url`` the way GitLab's hook worker does.

    ``Idempotency-Key`` is fresh unless ``headers`` carries one (a retry or a
    "Resend request" reuses it); the signature, when asked for, signs the exact
    bytes sent.
    """
    body = json.dumps(payload).encode()
    extra = dict(headers or {})
    idempotency_key = extra.pop("Idempotency-Key", None) or str(uuid.uuid4())
    sent = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Gitlab-Event": event
        or EVENT_HEADERS.get(payload.get("object_kind", ""), ""),
        "X-Gitlab-Webhook-UUID": str(uuid.uuid4()),
        "X-Gitlab-Event-UUID": extra.pop("X-Gitlab-Event-UUID", None)
        or str(uuid.uuid4()),
        "X-Gitlab-Instance": store_url,
        "Idempotency-Key": idempotency_key,
    }
    if secret is not None:
        sent["X-Gitlab-Token"] = secret
    if signing_secret is not None:
        timestamp = int(time.time())
        sent["webhook-id"] = idempotency_key
        sent["webhook-timestamp"] = str(timestamp)
        sent["webhook-signature"] = sign(
            signing_secret, idempotency_key, timestamp, body
        )
    sent.update(extra)

    return requests.post(target_url, data=body, headers=sent, timeout=10)
