"""``POST /webhooks/gitlab``: verify, record, answer.

The handler checks the shared secret (and the signature, when a signing secret
is configured), parses the payload, records it with :func:`bot.intake.record`
and answers within milliseconds. Status codes follow what GitLab does with them:
401 for a bad secret, 400 for a body that is not a GitLab event, 2xx for every
valid event, including those the bot does not act on, because GitLab disables
a hook after four failed deliveries in a row.

The receiver is a WSGI app of its own that sits in front of Flask and hands it
every other request. It needs nothing Flask adds to a request (a context, the
session cookie, after-request hooks), and that machinery was a tenth of the
intake's CPU time per delivery (``benchmarks/intake.py``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from bot import hooks, intake
from bot.errors import BotError, TemporaryError
from bot.settings import Settings
from bot.store import Store

log = logging.getLogger(__name__)

PATH = "/webhooks/gitlab"
#: Seconds between two attempts to learn the bot's user id.
LEARN_PAUSE = 5.0

DELIVERIES = Counter(
    "rwbot_webhook_deliveries_total",
    "Webhook deliveries received",
    ["event", "outcome"],
)

WSGIApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


class Receiver:
    """Answers ``PATH`` on the bot's own hosts; passes the rest to ``app``."""

    def __init__(
        self,
        app: WSGIApp,
        settings: Settings,
        store: Store,
        wake: threading.Event | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.store = store
        # Set once a delivery that gives the reconciler work is committed; a
        # reconciler in the same process (rwbot serve) waits on it when idle.
        self.wake = wake
        # Asks GitLab for the bot's user id, if it was down at start (bot.app).
        self.learn_bot_user: Callable[[], int] | None = None
        self._learning = threading.Lock()
        self._next_try = 0.0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or self._for_an_endpoint(environ):
            return self.app(environ, start_response)
        request = Request(environ)
        request.max_content_length = self.settings.max_body_bytes
        if request.method != "POST":
            response = _answer(405, error="use POST")
            response.headers["Allow"] = "POST"
        else:
            try:
                response = self.receive(request)
            except HTTPException as err:  # the body is larger than allowed
                response = _answer(err.code or 400, error=err.description or "")
        return response(environ, start_response)

    def _for_an_endpoint(self, environ: dict[str, Any]) -> bool:
        # Workspace endpoints' hosts belong to the workspace, this path included
        # (bot.endpoint_proxy answers them).
        domain = self.settings.endpoints_domain
        host = environ.get("HTTP_HOST", "").lower().rsplit(":", 1)[0]
        return bool(domain) and (host == domain or host.endswith("." + domain))

    def receive(self, request: Request) -> Response:
        settings = self.settings
        event_name = _printable(request.headers.get("X-Gitlab-Event", ""))[:64]
        body = request.get_data(cache=False)

        try:
            hooks.verify_token(
                settings.webhook_secret, request.headers.get("X-Gitlab-Token")
            )
            if settings.webhook_signing_secret:
                hooks.verify_signature(
                    settings.webhook_signing_secret, request.headers, body, time.time()
                )
        except hooks.Unauthorized as err:
            DELIVERIES.labels(_label(event_name), "unauthorized").inc()
            log.warning("webhook refused", extra={"reason": err.reason})
            return _answer(401, error=err.reason)
        try:
            key = hooks.delivery_key(request.headers, body)
            event = hooks.parse(event_name or None, request.content_type, body)
        except hooks.Malformed as err:
            DELIVERIES.labels(_label(event_name), "malformed").inc()
            return _answer(400, error=err.reason)

        # The bot's own comments are dropped here when its id is known; while
        # it is not, they are recorded like any other and bot.control skips
        # them (the reconciler always knows the bot's user).
        if isinstance(event, hooks.NoteEvent) and event.author_id == self._bot_user():
            event = hooks.Ignored("caused by the bot itself")
        try:
            outcome = intake.record(self.store, settings, key, event, event_name)
        except TemporaryError:
            DELIVERIES.labels(_label(event_name), "unavailable").inc()
            # GitLab retries later; the delivery was not stored.
            return _answer(503, error="store unavailable, retry later")
        if outcome in intake.WORK and self.wake is not None:
            self.wake.set()
        DELIVERIES.labels(_label(event_name), outcome).inc()
        # DEBUG, not INFO: the deliveries table already keeps every delivery with
        # its key, event and outcome, and a line per delivery was a tenth of the
        # intake's CPU time (benchmarks/intake.py).
        log.debug(
            "webhook recorded",
            extra={"delivery": key, "event": event_name, "outcome": outcome},
        )
        return _answer(200, status=outcome)

    def _bot_user(self) -> int | None:
        """The bot's user id; while unknown, it is asked for in the background
        (at most once per :data:`LEARN_PAUSE`), never within a request."""
        user_id = self.settings.bot_user_id
        if user_id is None and self.learn_bot_user is not None:
            with self._learning:
                if time.monotonic() >= self._next_try:
                    self._next_try = time.monotonic() + LEARN_PAUSE
                    threading.Thread(
                        target=self._learn, name="learn-bot-user", daemon=True
                    ).start()
        return user_id

    def _learn(self) -> None:
        assert self.learn_bot_user is not None
        try:
            user_id = self.learn_bot_user()
        except BotError as err:
            log.debug("bot user not learnt", extra={"error": str(err)})
            return
        self.settings = self.settings.with_overrides(bot_user_id=user_id)
        log.info("bot user learnt", extra={"user_id": user_id})


def _answer(code: int, **fields: str) -> Response:
    response = Response(json.dumps(fields), code, mimetype="application/json")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _printable(header: str) -> str:
    """The header as the deliveries table may keep it: no control characters
    (a NUL would make PostgreSQL refuse the row)."""
    if header.isprintable():
        return header
    return header.encode("unicode_escape").decode("ascii")


def _label(event_name: str) -> str:
    # Bound the label's values so a client cannot grow the metric without end.
    known = ("Merge Request Hook", "Note Hook")
    return event_name if event_name in known else "other"
