"""Devfile endpoints: which are exposed, their host names, tickets and cookies.

An endpoint serves code from the merge request, so it is never served on the
bot's own origin, where its script could use the viewer's session to open
terminals. Each exposed endpoint gets a host of its own under
``RWBOT_ENDPOINTS_DOMAIN``: ``<endpoint>--<workspace slug>.<domain>``. A viewer
reaches it through the bot's entry route (sign-in and the join flow's access
check), which hands over a short-lived, single-use *ticket*; the endpoint host
redeems it for a host-only *cookie* bound to that host, and the cookie is sent
back through the entry route every :data:`RECHECK_SECONDS`.

Everything here is plain functions with no I/O; :mod:`bot.endpoint_proxy` is the
web side, and the store records each ticket's one redemption, so it holds across
web replicas. Tickets and cookies are signed with the bot's session secret through
itsdangerous, each with a salt of its own, so one can never stand in for the
other (nor for a Flask session).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeSerializer

from bot.devfile.model import Endpoint
from bot.runtime import base

#: Devfile protocols the proxy serves. Both are plain HTTP to the container:
#: ``https`` asks for a secure route, and the bot's own TLS provides it.
PROTOCOLS = ("http", "https")
#: Seconds a ticket is good for: long enough for one redirect, no longer.
TICKET_SECONDS = 30
#: Longest ticket id the store keeps (the nonce is 22 characters).
TICKET_ID_LENGTH = 64
#: Seconds a cookie is honoured after the access check that issued it. A member
#: removed from the project keeps at most this long on pages they already had
#: open; checking on every request instead would put a GitLab API call in front
#: of every script and image an endpoint's page loads.
RECHECK_SECONDS = 300
#: The path on an endpoint host where a ticket is redeemed; the workspace's own
#: server never sees requests for it.
ENTER_PATH = "/.rwbot/enter"
#: Marks an exposed endpoint among a workspace's notes (see :func:`note`).
NOTE_PREFIX = "rwbot-endpoint:"

_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
#: ``<name>--p<project>-mr<iid>``; the slug holds no ``--`` and a name cannot end
#: with ``-``, so the last ``--`` splits a label in exactly one way.
_HOST_LABEL = re.compile(
    r"(?P<name>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)--p(?P<project>[1-9][0-9]*)"
    r"-mr(?P<mr>[1-9][0-9]*)"
)
_TICKET_SALT = "rwbot.endpoint-ticket"
_COOKIE_SALT = "rwbot.endpoint-cookie"


class Refused(Exception):
    """A ticket or cookie that must not be honoured; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Host:
    """Which workspace's which endpoint a host name stands for."""

    name: str
    key: base.WorkspaceKey


def is_domain(domain: str) -> bool:
    """A lower-case DNS name with room left for an endpoint's label."""
    labels = domain.split(".")
    return len(domain) <= 253 - 64 and all(_LABEL.fullmatch(part) for part in labels)


def host_name(name: str, key: base.WorkspaceKey, domain: str) -> str:
    """The host of endpoint ``name`` of workspace ``key``.

    Raises:
        ValueError: the name is not a devfile name, or the label would not fit
            in a DNS label (63 characters).
    """
    label = f"{name}--{key.slug()}"
    if len(label) > 63 or not _HOST_LABEL.fullmatch(label):
        raise ValueError(f"endpoint {name!r} has no valid host name")
    return f"{label}.{domain}"


def parse_host(host: str, domain: str) -> Host | None:
    """The endpoint a request's ``Host`` names (port and case ignored), or None
    when it is not a host under ``domain`` made by :func:`host_name`."""
    host = host.lower()
    name, _, port = host.rpartition(":")
    if port.isdigit():
        host = name
    label, dot, rest = host.partition(".")
    if not dot or rest != domain or len(label) > 63:
        return None
    match = _HOST_LABEL.fullmatch(label)
    if match is None:
        return None
    key = base.WorkspaceKey(int(match["project"]), int(match["mr"]))
    return Host(match["name"], key)


def of_workspace(url: str | None, key: base.WorkspaceKey, domain: str) -> bool:
    """``url`` (an ``Origin`` or ``Referer``) is on an endpoint host of
    workspace ``key``."""
    if not url:
        return False
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return False
    found = parse_host(netloc, domain) if netloc else None
    return found is not None and found.key == key


def may_forward(
    key: base.WorkspaceKey,
    domain: str,
    *,
    method: str,
    websocket: bool,
    origin: str | None,
    referer: str | None,
    fetch_site: str | None,
    fetch_mode: str | None,
) -> bool:
    """Whether a request that carries a good cookie for one of ``key``'s
    endpoint hosts may reach the workspace, judged by where the browser says it
    comes from.

    Every endpoint host shares the endpoints domain, so to a browser all of
    them are one *site*: a page of another workspace — the code of another MR,
    perhaps from a fork — may send requests here that carry this host's cookie,
    which ``SameSite`` cannot stop. So a request that names its origin must
    come from a page of this workspace, and one that does not (an image, a
    script) may come from elsewhere on the site only as a top-level GET, like a
    ``SameSite=Lax`` cookie would allow across sites. A WebSocket handshake
    always names its origin in a browser, so one that does not is refused.
    Other requests from browsers that send neither ``Origin`` nor
    ``Sec-Fetch-Site`` are let through: they cannot be told apart.
    """
    if origin is not None or websocket:
        return of_workspace(origin, key, domain)
    if fetch_site not in ("same-site", "cross-site"):
        return True
    if of_workspace(referer, key, domain):
        return True
    return fetch_mode == "navigate" and method in ("GET", "HEAD")


def exposed(endpoints: Iterable[Endpoint]) -> tuple[list[Endpoint], list[str]]:
    """The endpoints the bot exposes, and a note for each one it does not.

    Only ``exposure: public`` (the devfile's default) is exposed: ``internal``
    means reachable from inside the workspace only, and ``none`` not at all,
    which is what a review workspace gives them without the bot's help.
    """
    shown, notes = [], []
    for endpoint in endpoints:
        if endpoint.exposure != "public":
            notes.append(
                f"devfile endpoint {endpoint.name} is {endpoint.exposure}, "
                "so it is reachable only inside the workspace"
            )
        elif endpoint.protocol not in PROTOCOLS:
            notes.append(
                f"devfile endpoint {endpoint.name}: unsupported protocol "
                f"{endpoint.protocol} (http and https only)"
            )
        else:
            shown.append(endpoint)
    return shown, notes


def note(name: str) -> str:
    """The line among a workspace's notes that says ``name`` is exposed."""
    return NOTE_PREFIX + name


def split_notes(lines: Iterable[str]) -> tuple[list[str], list[str]]:
    """Exposed endpoint names, and the other notes, from a workspace's notes."""
    names, rest = [], []
    for line in lines:
        name = line.removeprefix(NOTE_PREFIX)
        if name == line:
            rest.append(line)
        elif _LABEL.fullmatch(name):
            names.append(name)
    return names, rest


def entry_path(key: base.WorkspaceKey, name: str) -> str:
    """The route on the bot's origin that leads a viewer to an endpoint."""
    return f"/w/{key.project_id}/{key.mr_iid}/endpoints/{name}"


def safe_path(path: object) -> str:
    """A path on the endpoint's own host to land on: never another host."""
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("//"):
        return "/"
    if "\\" in path or any(ord(c) < 0x21 or ord(c) == 0x7F for c in path):
        return "/"
    return path


# -- tickets ------------------------------------------------------------------


def issue_ticket(
    secret: str, host: str, user_id: int, path: str, now: float | None = None
) -> str:
    """A ticket for ``user_id`` to enter ``host`` and land on ``path``."""
    payload = {
        "h": host,
        "u": user_id,
        "p": safe_path(path),
        "n": secrets.token_urlsafe(16),
        "t": int(now if now is not None else time.time()),
    }
    return URLSafeSerializer(secret, salt=_TICKET_SALT).dumps(payload)


@dataclass(frozen=True)
class Ticket:
    """A ticket whose signature, host and age are good: who, where to, and the
    id and expiry its one use is recorded under in the store."""

    user_id: int
    path: str
    id: str
    #: Naive UTC, as the store keeps times.
    expires_at: dt.datetime


def check_ticket(
    secret: str, ticket: str, host: str, now: float | None = None
) -> Ticket:
    """The ticket presented at ``host``, if it may be redeemed there now.

    Whether it was redeemed before is not known here: the caller records the
    redemption in the store, which refuses a second one.

    Raises:
        Refused: forged, expired, or made for another host.
    """
    now = now if now is not None else time.time()
    data = _load(secret, _TICKET_SALT, ticket)
    if data is None:
        raise Refused("This link is not valid.")
    issued, user_id, nonce = data.get("t"), data.get("u"), data.get("n")
    if not isinstance(issued, int) or not isinstance(user_id, int):
        raise Refused("This link is not valid.")
    if not isinstance(nonce, str) or not 0 < len(nonce) <= TICKET_ID_LENGTH:
        raise Refused("This link is not valid.")
    if data.get("h") != host:
        raise Refused("This link was made for another endpoint.")
    if not 0 <= now - issued <= TICKET_SECONDS:
        raise Refused("This link has expired.")
    expires_at = dt.datetime.fromtimestamp(issued + TICKET_SECONDS, dt.UTC)
    path = safe_path(data.get("p"))
    return Ticket(user_id, path, nonce, expires_at.replace(tzinfo=None))


# -- cookies ------------------------------------------------------------------


def cookie_name(secure: bool) -> str:
    """``__Host-`` when served over https: browsers then refuse the cookie from
    any other host, so a page on a neighbouring endpoint host cannot plant one
    for the whole domain and shadow this host's own."""
    return "__Host-rwbot-endpoint" if secure else "rwbot-endpoint"


def issue_cookie(secret: str, host: str, user_id: int, now: float | None = None) -> str:
    """The cookie value for ``user_id`` on ``host``, just access-checked."""
    checked = int(now if now is not None else time.time())
    payload = {"h": host, "u": user_id, "t": checked}
    return URLSafeSerializer(secret, salt=_COOKIE_SALT).dumps(payload)


@dataclass(frozen=True)
class Visitor:
    """Who a good cookie lets in, and until when."""

    user_id: int
    #: When their access must be checked again (seconds since the epoch).
    due: float


def check_cookie(
    secret: str, values: Iterable[str], host: str, now: float | None = None
) -> Visitor | None:
    """The visitor of the first of ``values`` that is good for ``host`` now;
    None means the viewer must go back through the entry route."""
    now = now if now is not None else time.time()
    for value in values:
        data = _load(secret, _COOKIE_SALT, value)
        if data is None or data.get("h") != host:
            continue
        checked, user_id = data.get("t"), data.get("u")
        if not isinstance(checked, int) or not isinstance(user_id, int):
            continue
        if 0 <= now - checked <= RECHECK_SECONDS:
            return Visitor(user_id, checked + RECHECK_SECONDS)
    return None


def _load(secret: str, salt: str, value: str) -> dict[str, Any] | None:
    try:
        data = URLSafeSerializer(secret, salt=salt).loads(value)
    except BadSignature:
        return None
    return data if isinstance(data, dict) else None
