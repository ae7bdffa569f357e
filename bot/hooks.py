"""GitLab webhook deliveries, checked and parsed without any I/O.

The web layer hands this module what arrived (headers, raw body, the clock) and
gets back either a typed event or a :class:`WebhookError` that says which status to
answer: :class:`Unauthorized` (401) for a bad secret or signature, :class:`Malformed`
(400) for a delivery we cannot read. Events the bot does not use come back as
:class:`Ignored` and must still be answered 2xx: GitLab counts every other answer
as a failure and disables a hook after a few of them.

Delivery facts: docs.gitlab.com/user/project/integrations/webhooks and
docs.gitlab.com/user/project/integrations/webhook_events; signatures follow
https://www.standardwebhooks.com (spec ``spec/standard-webhooks.md``).

No input, however odd, raises anything but a :class:`WebhookError` here; the
tests fuzz that with hypothesis.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn, Protocol

from bot.errors import BotError, ConfigError

MERGE_REQUEST_HOOK = "Merge Request Hook"
NOTE_HOOK = "Note Hook"

#: Longest delivery key we store; GitLab's are UUIDs (36 characters).
MAX_KEY_LENGTH = 200
#: Largest id we accept: GitLab ids are bigint columns.
MAX_ID = 2**63 - 1
#: Largest id kept in the store's integer columns (projects, MR iids, users;
#: bot/store.py). GitLab's own ids for these are 32-bit integers.
MAX_STORED_ID = 2**31 - 1
#: Longest texts the store's columns hold (bot/store.py); longer is refused.
MAX_PATH = 512  # project path, source branch
MAX_URL = 960  # a project's web URL is stored with "/-/merge_requests/<iid>"
MAX_STATE = 16
MAX_USERNAME = 255
MAX_DISCUSSION_ID = 64
#: Titles are only shown, so a longer one is cut (GitLab allows 255).
MAX_TITLE = 255
_SHA_LENGTHS = (40, 64)  # SHA-1 and SHA-256 repositories


class WebhookError(BotError):
    """A delivery was refused; ``status`` is the HTTP answer, ``reason`` why."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unauthorized(WebhookError):
    """The delivery did not prove it came from our GitLab hook."""

    status = 401


class Malformed(WebhookError):
    """The delivery is not a webhook payload we can read."""

    status = 400


class HeaderSource(Protocol):
    """Anything with ``items()`` of header pairs: a ``dict`` or werkzeug ``Headers``.

    werkzeug's ``Headers`` is not a ``Mapping`` (it allows repeated names), so the
    functions below only iterate ``items()`` and compare names case-insensitively;
    a plain ``dict`` with any capitalisation works the same way.
    """

    def items(self) -> Iterable[tuple[str, str]]: ...


@dataclass(frozen=True)
class MergeRequestEvent:
    """A Merge Request Hook; the hook fires on the target project."""

    project_id: int
    project_path: str
    project_http_url: str
    project_web_url: str
    mr_iid: int
    mr_id: int
    title: str
    #: open, reopen, update, close, merge, approved, ...; "" when absent.
    action: str
    #: opened, closed, merged, locked.
    state: str
    head_sha: str
    #: The previous head; only on ``update`` when new commits were pushed.
    oldrev: str | None
    source_branch: str
    source_project_id: int
    target_project_id: int
    is_fork: bool
    draft: bool
    updated_at: datetime | None
    actor_id: int | None
    actor_username: str
    author_id: int | None
    url: str


@dataclass(frozen=True)
class NoteEvent:
    """A Note Hook for a comment on a merge request (system notes are ignored)."""

    project_id: int
    project_path: str
    project_http_url: str
    project_web_url: str
    mr_iid: int
    mr_id: int
    mr_state: str
    head_sha: str
    is_fork: bool
    source_project_id: int
    note_id: int
    body: str
    #: "create" or "update" (an edit); "create" when absent (before GitLab 16.11).
    action: str
    #: Always False today: :func:`parse` answers system notes with :class:`Ignored`.
    system: bool
    author_id: int
    author_username: str
    discussion_id: str | None
    created_at: datetime | None


@dataclass(frozen=True)
class Ignored:
    """A delivery the bot does not act on; answer it 2xx all the same."""

    reason: str


Event = MergeRequestEvent | NoteEvent | Ignored


def verify_token(expected: str, given: str | None) -> None:
    """Check ``X-Gitlab-Token`` against the configured secret in constant time.

    Raises:
        Unauthorized: the header is missing or holds another value.
        ConfigError: ``expected`` is empty, which would accept an empty header.
    """
    if not expected:
        raise ConfigError("the webhook secret is empty")
    if given is None:
        raise Unauthorized("missing X-Gitlab-Token")

    if not hmac.compare_digest(_utf8(expected), _utf8(given)):
        raise Unauthorized("invalid X-Gitlab-Token")


def verify_signature(
    secret: str,
    headers: HeaderSource,
    body: bytes,
    now: float,
    tolerance: float = 300,
) -> None:
    """Check a Standard Webhooks signature over the exact raw ``body``.

    ``webhook-signature`` holds space-separated ``v1,<base64>`` entries (several
    while a secret is rotated); one matching entry is enough. A timestamp more
    than ``tolerance`` seconds from ``now`` in either direction is refused, so a
    captured delivery cannot be replayed later.

    Args:
        secret: the ``whsec_<base64 key>`` signing secret of the hook.
        headers: the request headers; names are matched case-insensitively.
        body: the request body as received, before any decoding.
        now: the current unix time in seconds.
        tolerance: how far the timestamp may be from ``now``, in seconds.

    Raises:
        Unauthorized: a header is missing or malformed, the timestamp is out of
            the window, or no ``v1`` entry matches.
        ConfigError: ``secret`` is not base64 after its ``whsec_`` prefix.
    """
    key = _signing_key(secret)
    msg_id = _required_header(headers, "webhook-id")
    timestamp = _required_header(headers, "webhook-timestamp")
    signatures = _required_header(headers, "webhook-signature")

    if not (_is_token(msg_id) and len(msg_id) <= MAX_KEY_LENGTH):
        raise Unauthorized("invalid webhook-id")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 20):
        raise Unauthorized("invalid webhook-timestamp")
    if abs(now - int(timestamp)) > tolerance:
        raise Unauthorized("webhook-timestamp is outside the allowed window")

    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    undecodable = False
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue  # other schemes (v1a is asymmetric) are not ours to check
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            undecodable = True
            continue
        if hmac.compare_digest(expected, given):
            return

    if undecodable:
        raise Unauthorized("webhook-signature is not valid base64")
    raise Unauthorized("invalid webhook-signature")


def delivery_key(headers: HeaderSource, body: bytes) -> str:
    """A key that is the same for every retry or resend of one delivery.

    ``Idempotency-Key`` (GitLab 17.4+) is kept across retries and manual resends;
    older GitLab sends ``X-Gitlab-Webhook-UUID`` per delivery. Failing both, the
    key is a hash of ``X-Gitlab-Event-UUID`` and the body, which a resend repeats.

    Raises:
        Malformed: the chosen header is longer than :data:`MAX_KEY_LENGTH` or
            holds control or non-ASCII characters.
    """
    for name in ("Idempotency-Key", "X-Gitlab-Webhook-UUID"):
        value = (_header(headers, name) or "").strip()
        if not value:
            continue
        if len(value) > MAX_KEY_LENGTH:
            raise Malformed(f"{name} is longer than {MAX_KEY_LENGTH} characters")
        if not _is_token(value):
            raise Malformed(f"{name} holds unexpected characters")
        return value

    event_uuid = _header(headers, "X-Gitlab-Event-UUID") or ""
    digest = hashlib.sha256(_utf8(event_uuid) + b"\n" + body).hexdigest()
    return f"sha256:{digest}"


def parse(event_header: str | None, content_type: str | None, body: bytes) -> Event:
    """Turn a delivery into a typed event, or say why it is ignored or refused.

    Only the ``X-Gitlab-Event`` header is needed to ignore an event the bot does
    not use; its body is not read, so an unused hook can never make GitLab see a
    failure.

    Raises:
        Malformed: the event header is missing, the body is not a JSON object
            sent as JSON, or a field the bot needs is missing or of the wrong
            type; the reason names the field, e.g. ``object_attributes.iid``.
    """
    if event_header is None or not event_header.strip():
        raise Malformed("missing X-Gitlab-Event")

    event = event_header.strip()
    if event not in (MERGE_REQUEST_HOOK, NOTE_HOOK):
        return Ignored(f"{_shown(event)} events are not used")

    _check_content_type(content_type)
    root = _Object(_load(body))

    if event == MERGE_REQUEST_HOOK:
        if root.raw("object_kind") != "merge_request":
            return Ignored(f"{event} without object_kind merge_request")
        return _merge_request(root)

    if root.raw("object_kind") != "note":
        return Ignored(f"{event} without object_kind note")
    return _note(root)


def _merge_request(root: _Object) -> MergeRequestEvent:
    project = root.child("project")
    attrs = root.child("object_attributes")
    user = root.child("user")
    source_project_id = attrs.integer("source_project_id")
    target_project_id = attrs.integer("target_project_id")

    return MergeRequestEvent(
        project_id=project.integer("id", most=MAX_STORED_ID),
        project_path=project.text("path_with_namespace", most=MAX_PATH),
        project_http_url=project.first_text("git_http_url", "http_url", most=MAX_URL),
        project_web_url=project.text("web_url", most=MAX_URL),
        mr_iid=attrs.integer("iid", most=MAX_STORED_ID),
        mr_id=attrs.integer("id"),
        title=attrs.text("title")[:MAX_TITLE],
        action=attrs.optional_text("action") or "",
        state=attrs.text("state", most=MAX_STATE),
        head_sha=attrs.child("last_commit").sha("id"),
        oldrev=attrs.optional_sha("oldrev"),
        source_branch=attrs.text("source_branch", most=MAX_PATH),
        source_project_id=source_project_id,
        target_project_id=target_project_id,
        is_fork=source_project_id != target_project_id,
        # work_in_progress is the deprecated name; old GitLab sends only that.
        draft=attrs.flag("draft", default=attrs.flag("work_in_progress")),
        updated_at=attrs.timestamp("updated_at"),
        actor_id=user.optional_integer("id"),
        actor_username=user.text("username", most=MAX_USERNAME),
        author_id=attrs.optional_integer("author_id", most=MAX_STORED_ID),
        url=attrs.text("url", most=MAX_URL),
    )


_NOTEABLE_NAMES = {
    "Issue": "an issue",
    "Commit": "a commit",
    "Snippet": "a snippet",
    "DesignManagement::Design": "a design",
}


def _note(root: _Object) -> Event:
    attrs = root.child("object_attributes")
    noteable_type = attrs.text("noteable_type")
    if noteable_type != "MergeRequest":
        shown = _NOTEABLE_NAMES.get(noteable_type, _shown(noteable_type))
        return Ignored(f"note on {shown}")
    system = attrs.flag("system")
    if system:
        return Ignored("system note")

    project = root.child("project")
    merge_request = root.child("merge_request")
    user = root.child("user")
    source_project_id = merge_request.integer("source_project_id")

    return NoteEvent(
        project_id=project.integer("id", most=MAX_STORED_ID),
        project_path=project.text("path_with_namespace", most=MAX_PATH),
        project_http_url=project.first_text("git_http_url", "http_url", most=MAX_URL),
        project_web_url=project.text("web_url", most=MAX_URL),
        mr_iid=merge_request.integer("iid", most=MAX_STORED_ID),
        mr_id=merge_request.integer("id"),
        mr_state=merge_request.text("state", most=MAX_STATE),
        head_sha=merge_request.child("last_commit").sha("id"),
        is_fork=source_project_id != merge_request.integer("target_project_id"),
        source_project_id=source_project_id,
        note_id=attrs.integer("id"),
        body=attrs.text("note"),
        action=attrs.optional_text("action") or "create",
        system=system,
        author_id=attrs.integer("author_id", most=MAX_STORED_ID),
        author_username=user.text("username", most=MAX_USERNAME),
        discussion_id=attrs.optional_text("discussion_id", most=MAX_DISCUSSION_ID),
        created_at=attrs.timestamp("created_at"),
    )


class _Object:
    """A JSON object and where it sits in the payload, for precise reasons.

    Every getter checks the type of what it returns; a wrong or missing required
    value raises :class:`Malformed` naming the dotted path of the field. ``most``
    bounds an integer's value or a text's length, for what the store keeps.
    """

    def __init__(self, data: dict[str, object], path: str = "") -> None:
        self._data = data
        self._path = path

    def raw(self, key: str) -> object:
        return self._data.get(key)

    def child(self, key: str) -> _Object:
        value = self._data.get(key)
        if not isinstance(value, dict):
            self._fail(key, "an object")
        return _Object(value, self._where(key))

    def integer(self, key: str, most: int = MAX_ID) -> int:
        value = self.optional_integer(key, most)
        if value is None:
            self._fail(key, "an integer")
        return value

    def optional_integer(self, key: str, most: int = MAX_ID) -> int | None:
        value = self._data.get(key)
        if value is None:
            return None
        # bool is a subclass of int, and true is no id.
        if type(value) is not int:
            self._fail(key, "an integer")
        if not 0 <= value <= most:
            self._fail(key, "an integer in range")
        return value

    def text(self, key: str, most: int | None = None) -> str:
        value = self.optional_text(key, most)
        if value is None:
            self._fail(key, "a string")
        return value

    def optional_text(self, key: str, most: int | None = None) -> str | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self._fail(key, "a string")
        if not _storable(value):
            # GitLab's own database holds neither, so no real payload has them,
            # and PostgreSQL refuses both in text.
            self._fail(key, "text without NUL or unpaired surrogates")
        if most is not None and len(value) > most:
            self._fail(key, f"at most {most} characters")
        return value

    def first_text(self, *keys: str, most: int | None = None) -> str:
        """The first of ``keys`` that holds a string (for renamed fields)."""
        for key in keys:
            value = self.optional_text(key, most)
            if value is not None:
                return value
        self._fail(keys[0], "a string")

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._fail(key, "a boolean")
        return value

    def sha(self, key: str) -> str:
        value = self.optional_sha(key)
        if value is None:
            self._fail(key, "a commit SHA")
        return value

    def optional_sha(self, key: str) -> str | None:
        """A hex commit id; checked because it later reaches git's argv."""
        value = self._data.get(key)
        if value is None or value == "":
            return None
        if not (isinstance(value, str) and _is_sha(value)):
            self._fail(key, "a commit SHA")
        return value

    def timestamp(self, key: str) -> datetime | None:
        value = self.optional_text(key)
        if value is None:
            return None
        parsed = _parse_time(value)
        if parsed is None:
            self._fail(key, "a timestamp")
        return parsed

    def _where(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _fail(self, key: str, expected: str) -> NoReturn:
        where = self._where(key)
        if key not in self._data:
            raise Malformed(f"{where}: missing")
        raise Malformed(f"{where}: expected {expected}")


def parse_time(value: object) -> datetime | None:
    """A GitLab timestamp from a payload or an API answer, or None if absent or
    unreadable (see :func:`_parse_time`)."""
    return _parse_time(value) if isinstance(value, str) else None


def _parse_time(value: str) -> datetime | None:
    """Read GitLab's timestamp styles into an aware UTC datetime.

    Payloads mix ISO 8601 (``2013-12-03T17:23:34Z``, with or without
    milliseconds or a ``+00:00`` offset) and Rails' ``2013-12-03 17:23:34 UTC``.
    A time without a zone is taken as UTC, which is what GitLab stores.
    """
    text = value.strip()
    if len(text) > 64:
        return None
    if text.endswith(" UTC"):
        text = text.removesuffix(" UTC") + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _check_content_type(content_type: str | None) -> None:
    if content_type is None:
        raise Malformed("missing Content-Type")

    media_type, *params = content_type.split(";")
    if media_type.strip().lower() != "application/json":
        raise Malformed("Content-Type is not application/json")
    for param in params:
        name, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise Malformed("Content-Type charset is not UTF-8")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _load(body: bytes) -> dict[str, object]:
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        # ValueError also covers integers too long to convert (sys.int_info).
        raise Malformed("body is not valid JSON") from err

    if not isinstance(value, dict):
        raise Malformed("body is not a JSON object")
    return value


def _signing_key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ConfigError("the webhook signing secret is not whsec_<base64>") from err


def _header(headers: HeaderSource, name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _required_header(headers: HeaderSource, name: str) -> str:
    value = _header(headers, name)
    if value is None or not value.strip():
        raise Unauthorized(f"missing {name} header")
    return value.strip()


def _is_token(value: str) -> bool:
    """Printable ASCII without spaces: safe to store, log and sign."""
    return value.isascii() and value.isprintable() and " " not in value


def _is_sha(value: str) -> bool:
    hexdigits = "0123456789abcdefABCDEF"
    return len(value) in _SHA_LENGTHS and all(c in hexdigits for c in value)


def _storable(text: str) -> bool:
    """No NUL, and valid UTF-8 once encoded (JSON may carry lone surrogates)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: str) -> str:
    """``value`` made safe to put in a reason that ends up in logs."""
    if len(value) <= 80 and value.isprintable():
        return value
    return repr(value[:80])


def _utf8(value: str) -> bytes:
    # surrogatepass: a str decoded with surrogateescape must not raise here.
    return value.encode("utf-8", "surrogatepass")
