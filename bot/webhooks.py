"""``POST /webhooks/gitlab``: verify, record, answer.

The handler checks the shared secret (and the signature, when a signing secret
is configured), parses the payload, records it with :func:`bot.intake.record`
and answers within milliseconds. Status codes follow what GitLab does with them:
401 for a bad secret, 400 for a body that is not a GitLab event, 2xx for every
valid event, including those the bot does not act on, because GitLab disables
a hook after four failed deliveries in a row.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from prometheus_client import Counter

from bot import hooks, intake
from bot.errors import TemporaryError

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)

DELIVERIES = Counter(
    "rwbot_webhook_deliveries_total",
    "Webhook deliveries received",
    ["event", "outcome"],
)


@bp.post("/webhooks/gitlab")
def receive() -> ResponseReturnValue:
    settings = current_app.config["RWBOT_SETTINGS"]
    store = current_app.config["RWBOT_STORE"]
    event_name = request.headers.get("X-Gitlab-Event", "")[:64]
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
        return jsonify(error=err.reason), 401
    try:
        key = hooks.delivery_key(request.headers, body)
        event = hooks.parse(event_name or None, request.content_type, body)
    except hooks.Malformed as err:
        DELIVERIES.labels(_label(event_name), "malformed").inc()
        return jsonify(error=err.reason), 400

    if _caused_by_bot(event, settings.bot_user_id):
        event = hooks.Ignored("caused by the bot itself")
    try:
        outcome = intake.record(store, settings, key, event, event_name)
    except TemporaryError:
        DELIVERIES.labels(_label(event_name), "unavailable").inc()
        # GitLab retries later; the delivery was not stored.
        return jsonify(error="store unavailable, retry later"), 503
    DELIVERIES.labels(_label(event_name), outcome).inc()
    # DEBUG, not INFO: the deliveries table already keeps every delivery with
    # its key, event and outcome, and a line per delivery was a tenth of the
    # intake's CPU time (benchmarks/intake.py).
    log.debug(
        "webhook recorded",
        extra={"delivery": key, "event": event_name, "outcome": outcome},
    )
    return jsonify(status=outcome), 200


def _caused_by_bot(event: hooks.Event, bot_user_id: int | None) -> bool:
    if bot_user_id is None:
        return False
    if isinstance(event, hooks.NoteEvent):
        return event.author_id == bot_user_id
    return False


def _label(event_name: str) -> str:
    # Bound the label's values so a client cannot grow the metric without end.
    known = ("Merge Request Hook", "Note Hook")
    return event_name if event_name in known else "other"
