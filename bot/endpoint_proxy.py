"""Devfile endpoints on the web: the entry route and the proxy behind it.

``GET /w/<project>/<mr>/endpoints/<name>`` (on the bot's origin, linked from the
MR comment) signs the viewer in like the join link does, re-checks their access
with the join flow's own check (:func:`bot.provision.check_access`), and sends
them to the endpoint's host with a ticket (see :mod:`bot.endpoints`). Requests
whose ``Host`` is an endpoint host never reach the bot's other routes: the
ticket is redeemed at :data:`bot.endpoints.ENTER_PATH` for a cookie of that host,
and every other request with a good cookie is forwarded to the workspace, on
whichever runtime runs it (:meth:`bot.runtime.base.Runtime.endpoint`).

Forwarding streams both bodies, drops hop-by-hop headers and the bot's own
cookies, and says who asked in ``X-Forwarded-Host/Proto/For``. The workspace's
answer is passed on as it is: its headers are its own, the bot adds none.
A WebSocket upgrade from the endpoint's own page becomes a byte tunnel to the
workspace (:mod:`bot.endpoint_tunnel`) that lasts until the cookie is due.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import urlencode, urlsplit

import requests
from flask import (
    Blueprint,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

from bot import audit, auth, endpoint_tunnel, endpoints, provision
from bot.errors import PermanentError, TemporaryError
from bot.runtime.base import EndpointTarget, WorkspaceKey

log = logging.getLogger(__name__)
bp = Blueprint("endpoints", __name__)

#: Largest request body forwarded to a workspace, in bytes.
MAX_BODY = 25 * 1024 * 1024
#: Seconds to wait for a workspace to accept a connection, and then to answer.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
_CHUNK = 64 * 1024
#: Headers about one connection, never forwarded (RFC 9110, section 7.6.1),
#: and those the proxy sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_SET_HERE = frozenset(
    {"host", "content-length", "x-forwarded-host", "x-forwarded-proto"}
)


class _TooLarge(Exception):
    """A chunked request body grew past :data:`MAX_BODY`."""


def init_app(app: Any) -> None:
    """Register first: endpoint hosts must be answered before any other hook
    (the WebSocket origin check, the bot's routes) sees their requests."""
    http = requests.Session()
    http.headers.clear()  # forward the viewer's headers, add none of our own
    http.trust_env = False  # workspaces are reached directly, never via a proxy
    app.extensions["rwbot_endpoints"] = http
    app.before_request(_endpoint_hosts)
    app.register_blueprint(bp)


def _deps() -> tuple[Any, Any, Any, Any]:
    c = current_app.config
    return c["RWBOT_SETTINGS"], c["RWBOT_STORE"], c["RWBOT_GITLAB"], c["RWBOT_RUNTIME"]


def _page(title: str, reason: str, status: int) -> ResponseReturnValue:
    return render_template("refused.html.j2", title=title, reason=reason), status


def _try_later() -> ResponseReturnValue:
    return _page(
        "The endpoint cannot be opened right now",
        "Please try again in a moment.",
        503,
    )


def _origin(public_url: str, host: str) -> str:
    """``host`` with the scheme and port of the bot's public URL."""
    parts = urlsplit(public_url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


@bp.get("/w/<int:project_id>/<int:mr_iid>/endpoints/<name>")
def enter(project_id: int, mr_iid: int, name: str) -> ResponseReturnValue:
    settings, store, gitlab, runtime = _deps()
    if not settings.endpoints_domain:
        return _page(
            "Endpoints are not exposed here",
            "The bot's administrator has not set RWBOT_ENDPOINTS_DOMAIN, so "
            "workspace endpoints cannot be opened.",
            404,
        )
    person = auth.current_person()
    if person is None:
        return redirect(url_for("auth.login", next=request.full_path))

    key = WorkspaceKey(project_id, mr_iid)
    try:
        ws = provision.workspace(store, key)
        provision.check_access(settings, store, gitlab, runtime, person, ws)
        target = runtime.endpoint(key, name)
        host = endpoints.host_name(name, key, settings.endpoints_domain)
    except (provision.Refused, PermanentError) as err:
        who = person.username
        audit.record(store, project_id, mr_iid, who, "endpoint", "refused", err.reason)
        status = err.kind.value if isinstance(err, provision.Refused) else 404
        return _page("You cannot open this endpoint", err.reason, status)
    except (TemporaryError, ValueError):
        return _try_later()

    path = request.args.get("path") or target.path
    ticket = endpoints.issue_ticket(settings.session_secret, host, person.id, path)
    audit.record(store, project_id, mr_iid, person.username, "endpoint", "ok", name)
    location = _origin(settings.public_url, host) + endpoints.ENTER_PATH
    return redirect(location + "?" + urlencode({"ticket": ticket}))


def _endpoint_hosts() -> ResponseReturnValue | None:
    """Answer every request for a host under the endpoints domain."""
    settings = current_app.config["RWBOT_SETTINGS"]
    domain = settings.endpoints_domain
    if not domain:
        return None
    bare = request.host.lower().rsplit(":", 1)[0]
    found = endpoints.parse_host(request.host, domain)
    if found is None:
        if bare == domain or bare.endswith("." + domain):
            return _page("No such endpoint", "Nothing is served at this address.", 404)
        return None

    host = endpoints.host_name(found.name, found.key, domain)
    secure = settings.public_url.startswith("https://")
    if request.path == endpoints.ENTER_PATH:
        return _redeem(settings.session_secret, host, secure)
    cookies = request.cookies.getlist(endpoints.cookie_name(secure))
    visitor = endpoints.check_cookie(settings.session_secret, cookies, host)
    if visitor is None:
        return _back_to_entry(settings.public_url, found, request.full_path)
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    allowed = endpoints.may_forward(
        found.key,
        domain,
        method=request.method,
        websocket=upgrade,
        origin=request.headers.get("Origin"),
        referer=request.headers.get("Referer"),
        fetch_site=request.headers.get("Sec-Fetch-Site"),
        fetch_mode=request.headers.get("Sec-Fetch-Mode"),
    )
    if not allowed:
        return _page(
            "You cannot open this from here",
            "Only pages of this workspace may send requests to its endpoints.",
            403,
        )
    if upgrade:
        return _tunnel(found, host, secure, visitor)
    return _proxy(found, host, secure)


def _redeem(secret: str, host: str, secure: bool) -> ResponseReturnValue:
    store = current_app.config["RWBOT_STORE"]
    try:
        ticket = endpoints.check_ticket(secret, request.args.get("ticket", ""), host)
        if not store.redeem_ticket(ticket.id, ticket.expires_at):
            raise endpoints.Refused("This link was used already.")
    except endpoints.Refused as err:
        reason = f"{err.reason} Open the endpoint from the merge request again."
        return _page("You cannot open this endpoint", reason, 403)
    except TemporaryError:
        return _try_later()

    response = redirect(ticket.path)
    response.set_cookie(
        endpoints.cookie_name(secure),
        endpoints.issue_cookie(secret, host, ticket.user_id),
        max_age=endpoints.RECHECK_SECONDS,
        path="/",
        secure=secure,
        httponly=True,
        samesite="Lax",
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _back_to_entry(
    public_url: str, found: endpoints.Host, full_path: str
) -> ResponseReturnValue:
    """No cookie, or one whose access check is due: through the entry route,
    which a signed-in member passes without seeing it."""
    if request.method not in ("GET", "HEAD"):
        return _page(
            "Please reload the page",
            "Your access to this endpoint needs checking again.",
            401,
        )
    path = endpoints.safe_path(full_path.removesuffix("?"))
    entry = public_url + endpoints.entry_path(found.key, found.name)
    return redirect(entry + "?" + urlencode({"path": path}))


def _target(found: endpoints.Host) -> EndpointTarget | ResponseReturnValue:
    runtime = current_app.config["RWBOT_RUNTIME"]
    try:
        target: EndpointTarget = runtime.endpoint(found.key, found.name)
    except PermanentError as err:
        return _page("The endpoint is not available", err.reason, 502)
    except TemporaryError:
        return _page(
            "The endpoint is not available",
            "The workspace's runtime could not be asked; try again in a moment.",
            502,
        )
    return target


def _no_answer(
    found: endpoints.Host, target: EndpointTarget, err: Exception
) -> ResponseReturnValue:
    log.info(
        "endpoint did not answer",
        extra={"workspace": found.key.slug(), "error": type(err).__name__},
    )
    return _page(
        "The endpoint did not answer",
        f"Nothing in the workspace answered on port {target.port}. Is the "
        "server running?",
        502,
    )


def _proxy(found: endpoints.Host, host: str, secure: bool) -> ResponseReturnValue:
    target = _target(found)
    if not isinstance(target, EndpointTarget):
        return target
    length = request.content_length
    if length is not None and length > MAX_BODY:
        return _page("Too large", "The request body is too large.", 413)

    http = current_app.extensions["rwbot_endpoints"]
    try:
        upstream = http.request(
            request.method,
            _url(target),
            headers=_forwarded_headers(host, secure),
            data=_body(request.stream, length),
            stream=True,
            allow_redirects=False,
            timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
        )
    except _TooLarge:
        return _page("Too large", "The request body is too large.", 413)
    except requests.RequestException as err:
        return _no_answer(found, target, err)

    g.rwbot_proxied = True  # the workspace's headers are its own
    headers = [
        (name, value)
        for name, value in upstream.raw.headers.items()
        if name.lower() not in _HOP_BY_HOP
    ]
    response = Response(
        upstream.raw.stream(_CHUNK, decode_content=False),
        status=upstream.status_code,
        headers=headers,
    )
    response.call_on_close(upstream.close)
    return response


def _tunnel(
    found: endpoints.Host, host: str, secure: bool, visitor: endpoints.Visitor
) -> ResponseReturnValue:
    """A WebSocket for the workspace (:mod:`bot.endpoint_tunnel`), opened by
    a page of the workspace (:func:`bot.endpoints.may_forward`): unlike a
    fetch, a WebSocket from anywhere else would be free to read the answers.
    The connection ends when the cookie is due for its access check; the
    page's client then reconnects through it."""
    if request.method != "GET":
        return _page("Bad request", "A WebSocket is opened with GET.", 400)
    viewer = endpoint_tunnel.client_socket(request.environ)
    if viewer is None:
        return _page(
            "WebSocket is not supported here",
            "The web server the bot runs in cannot hand connections over.",
            501,
        )
    target = _target(found)
    if not isinstance(target, EndpointTarget):
        return target

    headers = _forwarded_headers(host, secure)
    headers["Connection"] = "Upgrade"
    headers["Upgrade"] = request.headers["Upgrade"]
    try:
        upstream, status, head = endpoint_tunnel.handshake(target, _raw(), headers)
    except (OSError, endpoint_tunnel.Unanswered, ValueError) as err:
        return _no_answer(found, target, err)
    if status != 101:
        upstream.close()
        return _page(
            "The endpoint refused the connection",
            f"The workspace's server answered the WebSocket request with {status}.",
            status if 400 <= status < 600 else 502,
        )

    fields = {"workspace": found.key.slug(), "endpoint": found.name}
    log.info("endpoint websocket opened", extra={**fields, "user_id": visitor.user_id})
    try:
        viewer.sendall(head)
    except OSError:
        upstream.close()
        endpoint_tunnel.hang_up(viewer)
    else:
        copied = endpoint_tunnel.splice(viewer, upstream, visitor.due)
        log.info("endpoint websocket closed", extra={**fields, "bytes": copied})
    return endpoint_tunnel.TakenOver()


def _raw() -> str:
    """The path and query as the viewer sent them, where the server kept them."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not isinstance(raw, str) or not raw.startswith("/"):
        query = request.query_string.decode("latin-1")
        raw = request.path + (f"?{query}" if query else "")
    return raw


def _url(target: EndpointTarget) -> str:
    address = f"[{target.host}]" if ":" in target.host else target.host
    return f"http://{address}:{target.port}{_raw()}"


def _forwarded_headers(host: str, secure: bool) -> dict[str, str]:
    """The viewer's headers without hop-by-hop ones and the bot's cookies."""
    listed = {
        token.strip().lower()
        for token in request.headers.get("Connection", "").split(",")
    }
    dropped = _HOP_BY_HOP | _SET_HERE | listed
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() not in dropped and name.lower() != "cookie"
    }
    ours = {
        endpoints.cookie_name(secure),
        current_app.config["SESSION_COOKIE_NAME"],
    }
    kept = [
        part.strip()
        for part in request.headers.get("Cookie", "").split(";")
        if part.strip() and part.split("=", 1)[0].strip() not in ours
    ]
    if kept:
        headers["Cookie"] = "; ".join(kept)
    previous = request.headers.get("X-Forwarded-For")
    client = request.remote_addr or ""
    headers["Host"] = request.host
    headers["X-Forwarded-Host"] = request.host
    headers["X-Forwarded-Proto"] = "https" if secure else "http"
    headers["X-Forwarded-For"] = f"{previous}, {client}" if previous else client
    return headers


class _Sized:
    """A body of known length, read as it is sent."""

    def __init__(self, stream: IO[bytes], length: int) -> None:
        self._stream = stream
        self._length = length

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = _CHUNK) -> bytes:
        return self._stream.read(size if size > 0 else _CHUNK)

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(_CHUNK):
            yield chunk


def _body(stream: IO[bytes], length: int | None) -> _Sized | Iterator[bytes] | None:
    if length is not None:
        return _Sized(stream, length) if length else None
    if "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
        return None
    return _chunked(stream)


def _chunked(stream: IO[bytes]) -> Iterator[bytes]:
    sent = 0
    while chunk := stream.read(_CHUNK):
        sent += len(chunk)
        if sent > MAX_BODY:
            raise _TooLarge
        yield chunk
