"""REST API v4 plumbing: routing, authentication, parameters, pagination.

One Flask rule catches ``/api/v4/...`` and a small route table does the rest,
because GitLab addresses projects by URL-encoded path (``group%2Fproject``) and
the WSGI ``PATH_INFO`` has already turned ``%2F`` into ``/``; the table matches
the raw request URI segment by segment instead.

Errors look like GitLab's (Grape): ``{"message": "404 Project Not Found"}`` for
missing records and denied access, ``{"error": "state does not have a valid
value"}`` for bad parameters, ``{"message": "401 Unauthorized"}`` without a
valid token. Handlers live in :mod:`.rest_core`, :mod:`.rest_notes` and
:mod:`.rest_admin` and register themselves with :func:`route`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

from flask import Blueprint, Response, current_app, jsonify, request

from tests.gitlab_double.state import AccessToken, Project, Store, User

api = Blueprint("api", __name__)

Handler = Callable[["Call"], Response]
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []

# Which OAuth scopes let a token use a route (the bot's token has ``api``).
READ_SCOPES = {"api", "read_api"}
USER_SCOPES = {"api", "read_api", "read_user"}
# Any token may read itself (lib/api/personal_access_tokens/self_information.rb).
SELF_SCOPES = {"api", "read_api", "read_user", "read_repository", "write_repository"}


class ApiError(Exception):
    """Answer the request with ``status`` and a GitLab-style JSON ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def not_found(what: str = "Not found") -> ApiError:
    return ApiError(404, {"message": f"404 {what}"})


def forbidden() -> ApiError:
    return ApiError(403, {"message": "403 Forbidden"})


def bad_param(name: str, problem: str = "is invalid") -> ApiError:
    return ApiError(400, {"error": f"{name} {problem}"})


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    """Register a handler; ``{name}`` in ``pattern`` matches one raw segment."""
    regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

    def register(handler: Handler) -> Handler:
        ROUTES.append((method, regex, handler))
        return handler

    return register


@dataclass
class Call:
    """One authenticated API request, as handlers see it."""

    store: Store
    user: User
    token: AccessToken
    args: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)

    def int_arg(self, name: str) -> int:
        value = self.args[name]
        if not value.isdigit():
            raise bad_param(name)
        return int(value)

    def project(self, min_level: int = 0) -> Project:
        """The route's ``{project}``, if this user may see it (and has the level).

        Access comes from membership only, the bot's included: a project the
        token's user is not a member of answers 404, as GitLab does for private
        projects. Public and internal projects are readable by everyone.
        """
        found = self.store.project_by_ref(unquote(self.args["project"]))
        level = self.store.access_level(found, self.user) if found else 0
        if found is None or (level == 0 and found.visibility == "private"):
            raise not_found("Project Not Found")
        if level < min_level:
            raise forbidden()

        return found

    def string(self, name: str, *, required: bool = False) -> str | None:
        value = self.params.get(name)
        if value is None:
            if required:
                raise bad_param(name, "is missing")
            return None
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise bad_param(name)

        return str(value)

    def integer(self, name: str) -> int | None:
        value = self.params.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not str(value).lstrip("-").isdigit():
            raise bad_param(name)

        return int(value)

    def boolean(self, name: str, default: bool | None = None) -> bool | None:
        value = self.params.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in {"true", "1", "yes", "t"}:
            return True
        if text in {"false", "0", "no", "f"}:
            return False
        raise bad_param(name)

    def choice(self, name: str, allowed: set[str], default: str | None) -> str | None:
        value = self.string(name)
        if value is None:
            return default
        if value not in allowed:
            raise bad_param(name, "does not have a valid value")

        return value


def store() -> Store:
    found: Store = current_app.extensions["gitlab_double"]
    return found


def bearer_token() -> str | None:
    """The token from ``PRIVATE-TOKEN`` or ``Authorization: Bearer``."""
    private = request.headers.get("PRIVATE-TOKEN")
    if private:
        return private
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()

    return None


def authenticate(data: Store, value: str | None) -> tuple[User, AccessToken]:
    """Resolve a token to its user, or raise the 401/403 GitLab would send."""
    token = data.tokens.get(value or "")
    if token is None or token.revoked:
        raise ApiError(401, {"message": "401 Unauthorized"})
    if token.expires_at and token.expires_at <= data.now():
        raise ApiError(
            401,
            {
                "error": "invalid_token",
                "error_description": "Token is expired. You can either do "
                "re-authorization or token refresh.",
            },
        )
    user = data.users[token.user_id]
    if user.state != "active":
        raise ApiError(
            403, {"message": "403 Forbidden - Your account has been blocked."}
        )

    return user, token


def check_scope(token: AccessToken, needed: set[str]) -> None:
    if not needed & set(token.scopes):
        raise ApiError(
            403,
            {
                "error": "insufficient_scope",
                "error_description": "The request requires higher privileges "
                "than provided by the access token.",
                "scope": " ".join(sorted(needed)),
            },
        )


def raw_path() -> str:
    """The request path exactly as sent, percent-encoding intact."""
    uri = request.environ.get("REQUEST_URI") or request.environ.get("RAW_URI")
    if not uri:
        return request.path
    return str(uri).split("?", 1)[0]


def request_params() -> dict[str, Any]:
    """Query string and body merged; python-gitlab sends JSON, curl sends forms."""
    params: dict[str, Any] = dict(request.args.items())
    body = request.get_json(silent=True) if request.is_json else None
    if isinstance(body, dict):
        params.update(body)
    elif request.form:
        params.update(request.form.items())

    return params


@api.route("/api/v4/<path:rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
def dispatch(rest: str) -> Response:
    path = raw_path().removeprefix("/api/v4/")
    matched = [(m, r.match(path), h) for m, r, h in ROUTES]
    allowed = [(m, match, h) for m, match, h in matched if match]
    if not allowed:
        return error(ApiError(404, {"error": "404 Not Found"}))
    chosen = [(match, h) for m, match, h in allowed if m == request.method]
    if not chosen:
        return error(ApiError(405, {"error": "405 Method Not Allowed"}))
    match, handler = chosen[0]
    args = match.groupdict() if match else {}

    data = store()
    try:
        with data.lock:
            user, token = authenticate(data, bearer_token())
            request.environ["gitlab_double.user"] = user.username
            needed = READ_SCOPES if request.method == "GET" else {"api"}
            if path == "user" or path.startswith("users/"):
                needed = USER_SCOPES if request.method == "GET" else {"api"}
            if path == "personal_access_tokens/self":
                needed = SELF_SCOPES
            check_scope(token, needed)
            return handler(Call(data, user, token, args, request_params()))
    except ApiError as err:
        return error(err)


def error(err: ApiError) -> Response:
    response = jsonify(err.body)
    response.status_code = err.status
    return response


def created(body: dict[str, Any]) -> Response:
    response = jsonify(body)
    response.status_code = 201
    return response


def no_content() -> Response:
    return Response(status=204)


def paginate(
    call: Call,
    items: Sequence[Any],
    shape: Callable[[Any], dict[str, Any]] | None = None,
) -> Response:
    """One page of ``items`` with the headers GitLab's offset pagination sends.

    docs.gitlab.com/api/rest/#pagination: ``X-Page``, ``X-Per-Page``,
    ``X-Total``, ``X-Total-Pages``, ``X-Next-Page``, ``X-Prev-Page`` (empty when
    there is none) and a ``Link`` header built from the request's own URL.
    With ``shape``, only the page's own records are turned into JSON shapes,
    so that a page costs what it holds rather than what the list holds.
    """
    page = call.integer("page") or 1
    per_page = call.integer("per_page") or 20
    page = max(page, 1)
    per_page = min(max(per_page, 1), 100)
    total = len(items)
    pages = max(math.ceil(total / per_page), 1)
    start = (page - 1) * per_page

    page_items = items[start : start + per_page]
    if shape is not None:
        page_items = [shape(item) for item in page_items]
    response = jsonify(list(page_items))
    next_page = page + 1 if page < pages else None
    prev_page = page - 1 if 1 < page <= pages + 1 else None
    response.headers.update(
        {
            "X-Page": str(page),
            "X-Per-Page": str(per_page),
            "X-Total": str(total),
            "X-Total-Pages": str(pages),
            "X-Next-Page": str(next_page or ""),
            "X-Prev-Page": str(prev_page or ""),
            "Link": link_header(page_links(next_page, prev_page, pages), per_page),
        }
    )
    return response


def page_links(
    next_page: int | None, prev_page: int | None, pages: int
) -> dict[str, int]:
    links = {"first": 1, "last": pages}
    if next_page:
        links = {"next": next_page, **links}
    if prev_page:
        links = {"prev": prev_page, **links}
    return links


def link_header(links: dict[str, int], per_page: int) -> str:
    base = request.host_url.rstrip("/") + raw_path()
    parts = []
    for rel, number in links.items():
        query = [(k, v) for k, v in request.args.items(multi=True) if k != "page"]
        query = [(k, v) for k, v in query if k != "per_page"]
        query += [("page", str(number)), ("per_page", str(per_page))]
        parts.append(f'<{base}?{urlencode(query)}>; rel="{rel}"')
    return ", ".join(parts)


def sort_records(
    call: Call, items: list[Any], keys: set[str], default_order: str
) -> list[Any]:
    """Order by ``order_by`` (one of ``keys``) then id, ``sort`` asc or desc."""
    order_by = call.choice("order_by", keys, default_order)
    sort = call.choice("sort", {"asc", "desc"}, "desc")
    ordered = sorted(items, key=lambda r: (getattr(r, order_by or "id"), r.id))

    return ordered if sort == "asc" else ordered[::-1]
