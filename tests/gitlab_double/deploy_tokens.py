"""Project deploy tokens (docs.gitlab.com/api/deploy_tokens) and their use in git.

``POST /projects/:id/deploy_tokens`` (``name``, ``scopes``, optional
``expires_at`` and ``username``) answers 201 with the token, the only time it is
shown; ``GET`` lists them without it, paginated, expired ones included, with
``expires_at`` in the REST API's time format (``2020-02-14T00:00:00.000Z``);
``DELETE …/deploy_tokens/:token_id`` answers 204, the token stops working at
once and is no longer listed. Every route needs Maintainer.

A deploy token is not an API token: it authenticates git over HTTP only, with
HTTP Basic (its username and the token), for its own project, and only within
its scopes (``read_repository`` reads, ``write_repository`` pushes) and before
it expires. :func:`git_reader` is what :mod:`.git_http` asks.
"""

from __future__ import annotations

import hmac
import secrets
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Response, request

from tests.gitlab_double.api import (
    Call,
    bad_param,
    created,
    no_content,
    not_found,
    paginate,
    route,
)
from tests.gitlab_double.state import MAINTAINER, Project, Store, api_time

#: The scopes GitLab knows for deploy tokens.
SCOPES = {
    "read_repository",
    "write_repository",
    "read_registry",
    "write_registry",
    "read_package_registry",
    "write_package_registry",
    "read_virtual_registry",
    "write_virtual_registry",
}


@dataclass
class DeployToken:
    id: int
    project_id: int
    name: str
    username: str
    token: str
    scopes: list[str]
    expires_at: datetime | None
    created_at: datetime


_TOKENS: weakref.WeakKeyDictionary[Store, dict[int, DeployToken]] = (
    weakref.WeakKeyDictionary()
)


def of(data: Store) -> dict[int, DeployToken]:
    """The live deploy tokens of the double holding ``data``, by id."""
    with data.lock:
        return _TOKENS.setdefault(data, {})


def shape(token: DeployToken, data: Store, *, with_token: bool = False) -> Any:
    expires = token.expires_at
    body: dict[str, Any] = {
        "id": token.id,
        "name": token.name,
        "username": token.username,
        "expires_at": None if expires is None else api_time(expires.astimezone(UTC)),
        "revoked": False,
        "expired": expires is not None and expires <= data.now(),
        "scopes": token.scopes,
    }
    if with_token:
        body["token"] = token.token
    return body


def _expiry(call: Call) -> datetime | None:
    text = call.string("expires_at")
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError as err:
        raise bad_param("expires_at") from err
    if when.tzinfo is None:
        raise bad_param("expires_at", "needs a time zone")
    return when


@route("POST", "projects/{project}/deploy_tokens")
def create_token(call: Call) -> Response:
    project = call.project(min_level=MAINTAINER)
    name = call.string("name", required=True) or ""
    scopes = call.params.get("scopes")
    if isinstance(scopes, str):
        scopes = [scopes]
    if not isinstance(scopes, list) or not scopes:
        raise bad_param("scopes", "is missing")
    if not all(isinstance(s, str) and s in SCOPES for s in scopes):
        raise bad_param("scopes", "does not have a valid value")
    token_id = call.store.next_id()
    token = DeployToken(
        id=token_id,
        project_id=project.id,
        name=name,
        username=call.string("username") or f"gitlab+deploy-token-{token_id}",
        token=f"gldt-{secrets.token_urlsafe(15)}",
        scopes=list(scopes),
        expires_at=_expiry(call),
        created_at=call.store.now(),
    )
    of(call.store)[token.id] = token
    return created(shape(token, call.store, with_token=True))


@route("GET", "projects/{project}/deploy_tokens")
def list_tokens(call: Call) -> Response:
    project = call.project(min_level=MAINTAINER)
    found = [t for t in of(call.store).values() if t.project_id == project.id]
    return paginate(call, [shape(t, call.store) for t in found])


@route("DELETE", "projects/{project}/deploy_tokens/{token_id}")
def delete_token(call: Call) -> Response:
    project = call.project(min_level=MAINTAINER)
    tokens = of(call.store)
    token = tokens.get(call.int_arg("token_id"))
    if token is None or token.project_id != project.id:
        raise not_found("Not found")
    del tokens[token.id]
    return no_content()


def git_reader(data: Store, project: Project | None, write: bool) -> str | None:
    """The deploy token's username when the request's Basic credentials are a
    live deploy token of ``project`` whose scopes allow this; else None."""
    auth = request.authorization
    if project is None or auth is None or auth.type != "basic" or not auth.password:
        return None
    scope = "write_repository" if write else "read_repository"
    for token in of(data).values():
        if (
            hmac.compare_digest(token.token, auth.password)
            and token.username == auth.username
            and token.project_id == project.id
            and scope in token.scopes
            and (token.expires_at is None or token.expires_at > data.now())
        ):
            return token.username
    return None
