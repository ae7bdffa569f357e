"""Tests for ``bot.hooks``: checking and parsing GitLab webhook deliveries.

Cases covered:

- ``X-Gitlab-Token``: the right token passes; a wrong one, a missing one, one of a
  different length and an empty configured secret are refused.
- Standard Webhooks signatures: the specification's published test vector, a
  fresh signature, several ``v1`` entries with one valid, werkzeug ``Headers``
  and any header capitalisation; refused for a wrong secret, a tampered body, a
  timestamp more than five minutes off in either direction, missing headers,
  non-numeric timestamps and garbage entries.
- Delivery keys: ``Idempotency-Key`` before ``X-Gitlab-Webhook-UUID`` before a
  hash of ``X-Gitlab-Event-UUID`` and the body; length and character bounds.
- Parsing every recorded sample in ``tests/samples`` (see its README) into the
  expected event, and the envelope rules: event header, content type, JSON.
- A ``Malformed`` reason naming the path of every required field, missing or of
  the wrong type, and of optional fields of the wrong type.
- Timestamp styles GitLab uses.
- What the store can keep: text longer than its column, NUL or an unpaired
  surrogate in any text, and ids beyond its integer columns are malformed,
  naming the field; a long title (only shown) is cut; the limits fit the
  columns.
- Hypothesis: arbitrary bytes, arbitrary JSON and mutations of the real samples
  never raise anything but ``WebhookError``, and what parses has fields of the
  declared types.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import types
import typing
from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from bot import hooks
from bot.errors import BotError, ConfigError
from bot.hooks import (
    Ignored,
    Malformed,
    MergeRequestEvent,
    NoteEvent,
    Unauthorized,
    WebhookError,
)

SAMPLES = Path(__file__).parent / "samples"
JSON = "application/json"
MR = hooks.MERGE_REQUEST_HOOK
NOTE = hooks.NOTE_HOOK

# The Standard Webhooks specification's published test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
NOW = 1_700_000_000.0


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return data


def event_for(name: str) -> str:
    if name.startswith("mr_"):
        return MR
    if name.startswith("note_"):
        return NOTE
    return "Push Hook"


def parse_payload(event: str, payload: object) -> hooks.Event:
    return hooks.parse(event, JSON, json.dumps(payload).encode())


def sign(secret: str, msg_id: str, timestamp: int | str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    body: bytes, secret: str = SECRET, timestamp: float = NOW
) -> dict[str, str]:
    ts = str(int(timestamp))
    return {
        "webhook-id": "msg_2b8e1f",
        "webhook-timestamp": ts,
        "webhook-signature": sign(secret, "msg_2b8e1f", ts, body),
    }


# --- X-Gitlab-Token ----------------------------------------------------------


def test_matching_token_is_accepted() -> None:
    hooks.verify_token("s3cret-token", "s3cret-token")


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("s3cret-tokeN", "invalid X-Gitlab-Token"),
        ("s3cret", "invalid X-Gitlab-Token"),
        ("s3cret-token-and-more", "invalid X-Gitlab-Token"),
        ("", "invalid X-Gitlab-Token"),
        ("s3crét-token", "invalid X-Gitlab-Token"),
        (None, "missing X-Gitlab-Token"),
    ],
    ids=["wrong", "shorter", "longer", "empty", "non-ascii", "missing"],
)
def test_other_tokens_are_unauthorized(given: str | None, reason: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        hooks.verify_token("s3cret-token", given)

    assert caught.value.reason == reason
    assert caught.value.status == 401


def test_empty_configured_secret_is_a_config_error_not_a_match() -> None:
    with pytest.raises(ConfigError):
        hooks.verify_token("", "")


# --- Standard Webhooks signatures ----------------------------------------------


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TS),
        "webhook-signature": VECTOR_SIGNATURE,
    }

    hooks.verify_signature(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS)


def test_fresh_signature_is_accepted() -> None:
    body = (SAMPLES / "mr_open.json").read_bytes()

    hooks.verify_signature(SECRET, signed_headers(body), body, now=NOW)


def test_one_valid_entry_among_several_is_enough() -> None:
    body = b'{"object_kind": "merge_request"}'
    headers = signed_headers(body)
    stale = sign(OTHER_SECRET, "msg_2b8e1f", int(NOW), body)
    headers["webhook-signature"] = (
        f"v1a,bm90LWNoZWNrZWQ= {stale} v1,!!! {headers['webhook-signature']}"
    )

    hooks.verify_signature(SECRET, headers, body, now=NOW)


def test_signature_headers_are_found_in_werkzeug_headers_any_case() -> None:
    body = b"{}"
    headers = Headers(
        {name.title(): value for name, value in signed_headers(body).items()}
    )

    hooks.verify_signature(SECRET, headers, body, now=NOW)


def test_signature_headers_are_found_in_a_dict_any_case() -> None:
    body = b"{}"
    headers = {name.upper(): value for name, value in signed_headers(body).items()}

    hooks.verify_signature(SECRET, headers, body, now=NOW)


def test_secret_without_whsec_prefix_is_used_as_the_key() -> None:
    body = b"{}"

    hooks.verify_signature(
        SECRET.removeprefix("whsec_"), signed_headers(body), body, now=NOW
    )


def test_signature_made_with_another_secret_is_unauthorized() -> None:
    body = b"{}"

    with pytest.raises(Unauthorized, match=r"^invalid webhook-signature$"):
        hooks.verify_signature(
            SECRET, signed_headers(body, secret=OTHER_SECRET), body, now=NOW
        )


def test_tampered_body_is_unauthorized() -> None:
    body = b'{"object_attributes": {"iid": 1}}'
    headers = signed_headers(body)

    with pytest.raises(Unauthorized, match=r"^invalid webhook-signature$"):
        hooks.verify_signature(SECRET, headers, body.replace(b"1", b"2"), now=NOW)


def test_signature_over_another_id_is_unauthorized() -> None:
    body = b"{}"
    headers = signed_headers(body)
    headers["webhook-id"] = "msg_other"

    with pytest.raises(Unauthorized, match=r"^invalid webhook-signature$"):
        hooks.verify_signature(SECRET, headers, body, now=NOW)


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 86_400])
def test_timestamp_more_than_five_minutes_off_is_a_replay(offset: int) -> None:
    body = b"{}"
    headers = signed_headers(body, timestamp=NOW + offset)

    with pytest.raises(Unauthorized, match="outside the allowed window"):
        hooks.verify_signature(SECRET, headers, body, now=NOW)


@pytest.mark.parametrize("offset", [-300, 300, 0])
def test_timestamp_within_five_minutes_is_accepted(offset: int) -> None:
    body = b"{}"

    hooks.verify_signature(
        SECRET, signed_headers(body, timestamp=NOW + offset), body, now=NOW
    )


@pytest.mark.parametrize(
    "name", ["webhook-id", "webhook-timestamp", "webhook-signature"]
)
def test_missing_signature_header_is_unauthorized(name: str) -> None:
    body = b"{}"
    headers = signed_headers(body)
    del headers[name]

    with pytest.raises(Unauthorized, match=f"^missing {name} header$"):
        hooks.verify_signature(SECRET, headers, body, now=NOW)


@pytest.mark.parametrize("timestamp", ["soon", "1.7e9", "-1700000000", "١٢٣", " "])
def test_non_numeric_timestamp_is_unauthorized(timestamp: str) -> None:
    body = b"{}"
    headers = signed_headers(body)
    headers["webhook-timestamp"] = timestamp

    with pytest.raises(Unauthorized, match="webhook-timestamp"):
        hooks.verify_signature(SECRET, headers, body, now=NOW)


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        ("v1,not base64!", "webhook-signature is not valid base64"),
        ("v1,", "invalid webhook-signature"),
        ("garbage", "invalid webhook-signature"),
        ("v2,AAAA", "invalid webhook-signature"),
        ("v1a,AAAA", "invalid webhook-signature"),
    ],
)
def test_garbage_signature_is_unauthorized(signature: str, reason: str) -> None:
    body = b"{}"
    headers = signed_headers(body)
    headers["webhook-signature"] = signature

    with pytest.raises(Unauthorized) as caught:
        hooks.verify_signature(SECRET, headers, body, now=NOW)

    assert caught.value.reason == reason


def test_webhook_id_with_control_characters_is_unauthorized() -> None:
    body = b"{}"
    headers = signed_headers(body)
    headers["webhook-id"] = "msg\n1"

    with pytest.raises(Unauthorized, match=r"^invalid webhook-id$"):
        hooks.verify_signature(SECRET, headers, body, now=NOW)


def test_signing_secret_that_is_not_base64_is_a_config_error() -> None:
    body = b"{}"

    with pytest.raises(ConfigError):
        hooks.verify_signature("whsec_%%%", signed_headers(body), body, now=NOW)


# --- delivery keys ---------------------------------------------------------------


def test_idempotency_key_comes_first() -> None:
    headers = {
        "Idempotency-Key": "7f0a1c3e-5b2d-4e6f-8a9b-0c1d2e3f4a5b",
        "X-Gitlab-Webhook-UUID": "11111111-2222-3333-4444-555555555555",
        "X-Gitlab-Event-UUID": "66666666-7777-8888-9999-000000000000",
    }

    assert hooks.delivery_key(headers, b"{}") == headers["Idempotency-Key"]


def test_webhook_uuid_is_used_without_idempotency_key() -> None:
    headers = Headers(
        {
            "x-gitlab-webhook-uuid": "11111111-2222-3333-4444-555555555555",
            "X-Gitlab-Event-UUID": "66666666-7777-8888-9999-000000000000",
        }
    )

    key = hooks.delivery_key(headers, b"{}")

    assert key == "11111111-2222-3333-4444-555555555555"


def test_without_either_header_the_key_hashes_event_uuid_and_body() -> None:
    headers = {"X-Gitlab-Event-UUID": "66666666-7777-8888-9999-000000000000"}

    key = hooks.delivery_key(headers, b'{"a": 1}')

    assert key.startswith("sha256:")
    assert len(key) == len("sha256:") + 64
    assert key == hooks.delivery_key(dict(headers), b'{"a": 1}')
    assert key != hooks.delivery_key(headers, b'{"a": 2}')
    assert key != hooks.delivery_key({"X-Gitlab-Event-UUID": "other"}, b'{"a": 1}')
    assert hooks.delivery_key({}, b"").startswith("sha256:")


def test_blank_idempotency_key_falls_through_to_the_next_header() -> None:
    headers = {"Idempotency-Key": "  ", "X-Gitlab-Webhook-UUID": "abc"}

    assert hooks.delivery_key(headers, b"") == "abc"


def test_delivery_key_of_exactly_200_characters_is_accepted() -> None:
    key = "k" * 200

    assert hooks.delivery_key({"Idempotency-Key": key}, b"") == key


@pytest.mark.parametrize("value", ["k" * 201, "bad\nkey", "bad key", "clé"])
def test_oversized_or_odd_delivery_key_is_malformed(value: str) -> None:
    with pytest.raises(Malformed, match="Idempotency-Key"):
        hooks.delivery_key({"Idempotency-Key": value}, b"")


# --- parsing the recorded samples ---------------------------------------------


def test_merge_request_open_is_parsed() -> None:
    event = parse_payload(MR, load("mr_open.json"))

    assert event == MergeRequestEvent(
        project_id=14,
        project_path="awesome_space/awesome_project",
        project_http_url="http://example.com/awesome_space/awesome_project.git",
        project_web_url="http://example.com/awesome_space/awesome_project",
        mr_iid=1,
        mr_id=99,
        title="MS-Viewport",
        action="open",
        state="opened",
        head_sha="da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        oldrev=None,
        source_branch="ms-viewport",
        source_project_id=14,
        target_project_id=14,
        is_fork=False,
        draft=False,
        updated_at=datetime(2013, 12, 3, 17, 23, 34, tzinfo=UTC),
        actor_id=1,
        actor_username="root",
        author_id=51,
        url="http://example.com/awesome_space/awesome_project/-/merge_requests/1",
    )


def test_update_with_new_commits_carries_oldrev_and_new_head() -> None:
    event = parse_payload(MR, load("mr_update_commits.json"))

    assert isinstance(event, MergeRequestEvent)
    assert event.action == "update"
    assert event.oldrev == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    assert event.head_sha == "4f8a2a1c0b0d1e6c9f3b7a5e2d4c6b8a0e1f2d3c"
    assert event.updated_at == datetime(2013, 12, 4, 9, 12, 5, 213000, tzinfo=UTC)


def test_update_without_new_commits_has_no_oldrev() -> None:
    event = parse_payload(MR, load("mr_update_title.json"))

    assert isinstance(event, MergeRequestEvent)
    assert event.action == "update"
    assert event.oldrev is None
    assert event.title == "Support the viewport meta tag"
    assert event.updated_at == datetime(2013, 12, 4, 10, 0, 0, tzinfo=UTC)


def test_draft_toggle_is_an_update_with_draft_set() -> None:
    event = parse_payload(MR, load("mr_update_draft.json"))

    assert isinstance(event, MergeRequestEvent)
    assert (event.action, event.draft, event.oldrev) == ("update", True, None)
    assert event.updated_at == datetime(2013, 12, 4, 10, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("name", "action", "state"),
    [
        ("mr_close.json", "close", "closed"),
        ("mr_reopen.json", "reopen", "opened"),
        ("mr_merge.json", "merge", "merged"),
        ("mr_approved.json", "approved", "opened"),
    ],
)
def test_state_changes_are_parsed_with_action_and_state(
    name: str, action: str, state: str
) -> None:
    event = parse_payload(MR, load(name))

    assert isinstance(event, MergeRequestEvent)
    assert (event.action, event.state, event.mr_iid) == (action, state, 1)


def test_approval_reports_the_approver_as_actor() -> None:
    event = parse_payload(MR, load("mr_approved.json"))

    assert isinstance(event, MergeRequestEvent)
    assert (event.actor_id, event.actor_username, event.author_id) == (6, "user1", 51)


def test_fork_merge_request_is_marked_as_fork_on_the_target_project() -> None:
    event = parse_payload(MR, load("mr_fork_open.json"))

    assert isinstance(event, MergeRequestEvent)
    assert event.is_fork is True
    assert (event.source_project_id, event.target_project_id) == (20, 14)
    assert event.project_id == 14
    assert event.project_path == "awesome_space/awesome_project"
    assert event.head_sha == "c0ffee1234567890abcdef1234567890abcdef12"
    assert (event.mr_iid, event.actor_username) == (2, "forkuser")


def test_note_on_a_merge_request_is_parsed() -> None:
    event = parse_payload(NOTE, load("note_mr_create.json"))

    assert event == NoteEvent(
        project_id=5,
        project_path="gitlab-org/gitlab-test",
        project_http_url="http://example.com/gitlab-org/gitlab-test.git",
        project_web_url="http://example.com/gitlab-org/gitlab-test",
        mr_iid=1,
        mr_id=7,
        mr_state="opened",
        head_sha="562e173be03b8ff2efb05345d12df18815438a4b",
        is_fork=False,
        source_project_id=5,
        note_id=1244,
        body="This MR needs work.",
        action="create",
        system=False,
        author_id=1,
        author_username="root",
        discussion_id="5f8a35e3bb4a0a4f0a16e2bd4c9f16d9e5d0b7c3",
        created_at=datetime(2015, 5, 17, 18, 21, 36, tzinfo=UTC),
    )


def test_edited_note_is_an_update_of_the_same_note() -> None:
    event = parse_payload(NOTE, load("note_mr_update.json"))

    assert isinstance(event, NoteEvent)
    assert (event.action, event.note_id) == ("update", 1244)
    assert event.body.startswith("This MR needs work: ")


def test_note_without_action_is_a_create() -> None:
    payload = load("note_mr_create.json")
    del payload["object_attributes"]["action"]

    event = parse_payload(NOTE, payload)

    assert isinstance(event, NoteEvent)
    assert event.action == "create"


def test_note_on_a_fork_merge_request_is_marked_as_fork() -> None:
    payload = load("note_mr_create.json")
    payload["merge_request"]["source_project_id"] = 20

    event = parse_payload(NOTE, payload)

    assert isinstance(event, NoteEvent)
    assert (event.is_fork, event.source_project_id) == (True, 20)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("note_mr_system.json", "system note"),
        ("note_issue.json", "note on an issue"),
        ("push.json", "Push Hook events are not used"),
    ],
)
def test_samples_the_bot_does_not_use_are_ignored(name: str, reason: str) -> None:
    assert parse_payload(event_for(name), load(name)) == Ignored(reason)


def test_every_sample_parses_without_error() -> None:
    names = sorted(path.name for path in SAMPLES.glob("*.json"))

    assert len(names) == 14
    for name in names:
        body = (SAMPLES / name).read_bytes()
        event = hooks.parse(event_for(name), "application/json", body)
        assert_typed(event)


# --- the envelope: event header, content type, body ------------------------------


def test_missing_event_header_is_malformed() -> None:
    with pytest.raises(Malformed, match=r"^missing X-Gitlab-Event$") as caught:
        hooks.parse(None, JSON, b"{}")

    assert caught.value.status == 400


@pytest.mark.parametrize(
    "event", ["Pipeline Hook", "System Hook", "Emoji Hook", "merge request hook"]
)
def test_other_events_are_ignored_without_reading_the_body(event: str) -> None:
    result = hooks.parse(event, None, b"\xff not json")

    assert result == Ignored(f"{event} events are not used")


def test_odd_event_header_is_quoted_in_the_reason() -> None:
    result = hooks.parse("Evil\nHook" + "x" * 200, JSON, b"{}")

    assert isinstance(result, Ignored)
    assert "\n" not in result.reason
    assert len(result.reason) < 120


@pytest.mark.parametrize(
    ("event", "kind"),
    [(MR, "note"), (NOTE, "merge_request"), (MR, None), (NOTE, ["note"])],
)
def test_relevant_header_with_other_object_kind_is_ignored(
    event: str, kind: object
) -> None:
    payload = load("mr_open.json" if event == MR else "note_mr_create.json")
    payload["object_kind"] = kind

    assert isinstance(parse_payload(event, payload), Ignored)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        'Application/JSON;charset="UTF-8"',
        "application/json; boundary=x",
    ],
)
def test_json_content_types_are_accepted(content_type: str) -> None:
    body = (SAMPLES / "mr_open.json").read_bytes()

    assert isinstance(hooks.parse(MR, content_type, body), MergeRequestEvent)


@pytest.mark.parametrize(
    ("content_type", "reason"),
    [
        (None, "missing Content-Type"),
        ("text/plain", "Content-Type is not application/json"),
        ("application/x-www-form-urlencoded", "Content-Type is not application/json"),
        ("application/json-patch+json", "Content-Type is not application/json"),
        ("application/json; charset=latin-1", "Content-Type charset is not UTF-8"),
    ],
)
def test_other_content_types_are_malformed(
    content_type: str | None, reason: str
) -> None:
    with pytest.raises(Malformed) as caught:
        hooks.parse(MR, content_type, b"{}")

    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe{}",
        b"\xef\xbb\xbf{}",
        b"{'a': 1}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": 1',
        b'{"a": ' + b"9" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": "\xed\xa0\x80"}',
    ],
    ids=[
        "empty",
        "utf16-bom",
        "utf8-bom",
        "single-quotes",
        "nan",
        "infinity",
        "truncated",
        "5000-digit-int",
        "deeply-nested",
        "encoded-surrogate",
    ],
)
def test_body_that_is_not_json_is_malformed(body: bytes) -> None:
    with pytest.raises(Malformed, match=r"^body is not valid JSON$"):
        hooks.parse(MR, JSON, body)


@pytest.mark.parametrize("body", [b"[]", b'"merge_request"', b"1", b"null"])
def test_body_that_is_not_an_object_is_malformed(body: bytes) -> None:
    with pytest.raises(Malformed, match=r"^body is not a JSON object$"):
        hooks.parse(NOTE, JSON, body)


# --- Malformed reasons for required fields ----------------------------------------

MR_REQUIRED = [
    ("project", "an object"),
    ("project.id", "an integer"),
    ("project.path_with_namespace", "a string"),
    ("project.web_url", "a string"),
    ("user", "an object"),
    ("user.username", "a string"),
    ("object_attributes", "an object"),
    ("object_attributes.iid", "an integer"),
    ("object_attributes.id", "an integer"),
    ("object_attributes.title", "a string"),
    ("object_attributes.state", "a string"),
    ("object_attributes.last_commit", "an object"),
    ("object_attributes.last_commit.id", "a commit SHA"),
    ("object_attributes.source_branch", "a string"),
    ("object_attributes.source_project_id", "an integer"),
    ("object_attributes.target_project_id", "an integer"),
    ("object_attributes.url", "a string"),
]
NOTE_REQUIRED = [
    ("project", "an object"),
    ("project.id", "an integer"),
    ("project.path_with_namespace", "a string"),
    ("project.web_url", "a string"),
    ("user", "an object"),
    ("user.username", "a string"),
    ("object_attributes", "an object"),
    ("object_attributes.noteable_type", "a string"),
    ("object_attributes.id", "an integer"),
    ("object_attributes.note", "a string"),
    ("object_attributes.author_id", "an integer"),
    ("merge_request", "an object"),
    ("merge_request.iid", "an integer"),
    ("merge_request.id", "an integer"),
    ("merge_request.state", "a string"),
    ("merge_request.last_commit", "an object"),
    ("merge_request.last_commit.id", "a commit SHA"),
    ("merge_request.source_project_id", "an integer"),
    ("merge_request.target_project_id", "an integer"),
]
REQUIRED_CASES = [("mr_open.json", MR, *case) for case in MR_REQUIRED] + [
    ("note_mr_create.json", NOTE, *case) for case in NOTE_REQUIRED
]
# A value of the wrong type for each expectation; true is no integer.
WRONG_VALUES = {
    "an object": [[], "project", 1],
    "an integer": [True, "14", 14.0, [14], None],
    "a string": [7, False, ["x"], {"x": 1}, None],
    "a commit SHA": [7, "main", "da15608", "--upload-pack=touch /tmp/x", None],
}


def walk_to(payload: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    *parents, key = path.split(".")
    node = payload
    for parent in parents:
        node = node[parent]
    return node, key


@pytest.mark.parametrize(("sample", "event", "path", "expected"), REQUIRED_CASES)
def test_missing_required_field_is_malformed_naming_its_path(
    sample: str, event: str, path: str, expected: str
) -> None:
    payload = load(sample)
    node, key = walk_to(payload, path)
    del node[key]

    with pytest.raises(Malformed) as caught:
        parse_payload(event, payload)

    assert caught.value.reason == f"{path}: missing"


@pytest.mark.parametrize(("sample", "event", "path", "expected"), REQUIRED_CASES)
def test_wrong_typed_required_field_is_malformed_naming_its_path(
    sample: str, event: str, path: str, expected: str
) -> None:
    for wrong in WRONG_VALUES[expected]:
        payload = load(sample)
        node, key = walk_to(payload, path)
        node[key] = wrong

        with pytest.raises(Malformed) as caught:
            parse_payload(event, payload)

        assert caught.value.reason == f"{path}: expected {expected}", wrong


def test_http_url_falls_back_from_git_http_url_to_http_url() -> None:
    payload = load("mr_open.json")
    del payload["project"]["git_http_url"]
    payload["project"]["http_url"] = "http://example.com/fallback.git"

    event = parse_payload(MR, payload)

    assert isinstance(event, MergeRequestEvent)
    assert event.project_http_url == "http://example.com/fallback.git"


def test_missing_both_http_urls_is_malformed() -> None:
    payload = load("note_mr_create.json")
    del payload["project"]["git_http_url"], payload["project"]["http_url"]

    with pytest.raises(Malformed, match=r"^project\.git_http_url: missing$"):
        parse_payload(NOTE, payload)


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("object_attributes.iid", 2**63, "expected an integer in range"),
        ("object_attributes.iid", -1, "expected an integer in range"),
        ("object_attributes.oldrev", 5, "expected a commit SHA"),
        ("object_attributes.oldrev", "HEAD~1", "expected a commit SHA"),
        ("object_attributes.updated_at", "yesterday", "expected a timestamp"),
        ("object_attributes.updated_at", 1386091414, "expected a string"),
        ("object_attributes.draft", "yes", "expected a boolean"),
        ("object_attributes.work_in_progress", 1, "expected a boolean"),
        ("object_attributes.action", ["open"], "expected a string"),
        ("object_attributes.author_id", "51", "expected an integer"),
        ("user.id", False, "expected an integer"),
    ],
)
def test_wrong_typed_optional_mr_field_is_malformed(
    path: str, value: object, reason: str
) -> None:
    payload = load("mr_open.json")
    node, key = walk_to(payload, path)
    node[key] = value

    with pytest.raises(Malformed) as caught:
        parse_payload(MR, payload)

    assert caught.value.reason == f"{path}: {reason}"


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("object_attributes.system", "false", "expected a boolean"),
        ("object_attributes.discussion_id", 17, "expected a string"),
        ("object_attributes.created_at", "17 May 2015", "expected a timestamp"),
        ("object_attributes.action", 1, "expected a string"),
    ],
)
def test_wrong_typed_optional_note_field_is_malformed(
    path: str, value: object, reason: str
) -> None:
    payload = load("note_mr_create.json")
    node, key = walk_to(payload, path)
    node[key] = value

    with pytest.raises(Malformed) as caught:
        parse_payload(NOTE, payload)

    assert caught.value.reason == f"{path}: {reason}"


@pytest.mark.parametrize(
    "path",
    [
        "object_attributes.oldrev",
        "object_attributes.updated_at",
        "object_attributes.draft",
        "object_attributes.action",
        "object_attributes.author_id",
        "user.id",
    ],
)
def test_optional_mr_fields_may_be_absent(path: str) -> None:
    payload = load("mr_update_commits.json")
    node, key = walk_to(payload, path)
    del node[key]

    assert isinstance(parse_payload(MR, payload), MergeRequestEvent)


def test_old_gitlab_without_draft_reads_work_in_progress() -> None:
    payload = load("mr_update_draft.json")
    del payload["object_attributes"]["draft"]

    event = parse_payload(MR, payload)

    assert isinstance(event, MergeRequestEvent)
    assert event.draft is True


def test_sha256_repositories_give_64_character_shas() -> None:
    payload = load("mr_open.json")
    payload["object_attributes"]["last_commit"]["id"] = "ab" * 32

    event = parse_payload(MR, payload)

    assert isinstance(event, MergeRequestEvent)
    assert event.head_sha == "ab" * 32


@pytest.mark.parametrize(
    "noteable_type", ["Commit", "Snippet", "Issue", "WikiPage::Meta", "Epic"]
)
def test_notes_on_anything_but_a_merge_request_are_ignored(
    noteable_type: str,
) -> None:
    payload = load("note_issue.json")
    payload["object_attributes"]["noteable_type"] = noteable_type

    result = parse_payload(NOTE, payload)

    assert isinstance(result, Ignored)
    assert result.reason.startswith("note on ")


def test_system_note_is_ignored_before_its_merge_request_is_read() -> None:
    payload = load("note_mr_system.json")
    del payload["merge_request"]

    assert parse_payload(NOTE, payload) == Ignored("system note")


# --- timestamps -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2013-12-03T17:23:34Z", datetime(2013, 12, 3, 17, 23, 34, tzinfo=UTC)),
        (
            "2013-12-03T17:23:34.123Z",
            datetime(2013, 12, 3, 17, 23, 34, 123000, tzinfo=UTC),
        ),
        ("2013-12-03 17:23:34 UTC", datetime(2013, 12, 3, 17, 23, 34, tzinfo=UTC)),
        ("2013-12-03T17:23:34+00:00", datetime(2013, 12, 3, 17, 23, 34, tzinfo=UTC)),
        ("2013-12-03T19:23:34+02:00", datetime(2013, 12, 3, 17, 23, 34, tzinfo=UTC)),
        ("2013-12-03T17:23:34", datetime(2013, 12, 3, 17, 23, 34, tzinfo=UTC)),
    ],
)
def test_gitlab_timestamp_styles_become_aware_utc(
    text: str, expected: datetime
) -> None:
    payload = load("mr_open.json")
    payload["object_attributes"]["updated_at"] = text

    event = parse_payload(MR, payload)

    assert isinstance(event, MergeRequestEvent)
    assert event.updated_at == expected
    assert event.updated_at is not None
    assert event.updated_at.utcoffset() is not None
    assert event.updated_at.tzinfo == UTC


@pytest.mark.parametrize(
    "text", ["", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "now"]
)
def test_timestamps_out_of_range_or_nonsense_are_malformed(text: str) -> None:
    payload = load("mr_open.json")
    payload["object_attributes"]["updated_at"] = text

    with pytest.raises(Malformed, match="updated_at: expected a timestamp"):
        parse_payload(MR, payload)


# --- what the store can keep --------------------------------------------------------

STORED_TEXT = [
    ("mr_open.json", MR, "project.path_with_namespace", hooks.MAX_PATH),
    ("mr_open.json", MR, "project.web_url", hooks.MAX_URL),
    ("mr_open.json", MR, "project.git_http_url", hooks.MAX_URL),
    ("mr_open.json", MR, "object_attributes.state", hooks.MAX_STATE),
    ("mr_open.json", MR, "object_attributes.source_branch", hooks.MAX_PATH),
    ("mr_open.json", MR, "object_attributes.url", hooks.MAX_URL),
    ("mr_open.json", MR, "user.username", hooks.MAX_USERNAME),
    ("note_mr_create.json", NOTE, "merge_request.state", hooks.MAX_STATE),
    ("note_mr_create.json", NOTE, "user.username", hooks.MAX_USERNAME),
    ("note_mr_create.json", NOTE, "object_attributes.discussion_id", 64),
]


@pytest.mark.parametrize(("sample", "event", "path", "most"), STORED_TEXT)
def test_text_longer_than_its_column_is_malformed_naming_its_path(
    sample: str, event: str, path: str, most: int
) -> None:
    payload = load(sample)
    node, key = walk_to(payload, path)
    node[key] = "a" * most
    parse_payload(event, payload)
    node[key] = "a" * (most + 1)

    with pytest.raises(Malformed) as caught:
        parse_payload(event, payload)

    assert caught.value.reason == f"{path}: expected at most {most} characters"


@pytest.mark.parametrize("text", ["\x00", "merge\x00d", "\ud800", "a\udfffb"])
@pytest.mark.parametrize(
    ("sample", "event", "path"),
    [
        ("mr_open.json", MR, "object_attributes.title"),
        ("mr_open.json", MR, "object_attributes.source_branch"),
        ("note_mr_create.json", NOTE, "object_attributes.note"),
        ("note_mr_create.json", NOTE, "user.username"),
    ],
)
def test_nul_or_an_unpaired_surrogate_in_text_is_malformed(
    sample: str, event: str, path: str, text: str
) -> None:
    payload = load(sample)
    node, key = walk_to(payload, path)
    node[key] = text

    with pytest.raises(Malformed) as caught:
        parse_payload(event, payload)

    assert caught.value.reason == (
        f"{path}: expected text without NUL or unpaired surrogates"
    )


def test_a_long_title_is_cut_since_it_is_only_shown() -> None:
    payload = load("mr_open.json")
    payload["object_attributes"]["title"] = "é" * 5000

    event = parse_payload(MR, payload)

    assert isinstance(event, MergeRequestEvent)
    assert event.title == "é" * hooks.MAX_TITLE


@pytest.mark.parametrize(
    ("path", "event", "sample"),
    [
        ("project.id", MR, "mr_open.json"),
        ("object_attributes.iid", MR, "mr_open.json"),
        ("object_attributes.author_id", MR, "mr_open.json"),
        ("merge_request.iid", NOTE, "note_mr_create.json"),
        ("object_attributes.author_id", NOTE, "note_mr_create.json"),
    ],
)
def test_ids_beyond_the_stores_integer_columns_are_malformed(
    path: str, event: str, sample: str
) -> None:
    payload = load(sample)
    node, key = walk_to(payload, path)
    node[key] = hooks.MAX_STORED_ID
    parse_payload(event, payload)
    node[key] = hooks.MAX_STORED_ID + 1

    with pytest.raises(Malformed, match=f"{path}: expected an integer in range"):
        parse_payload(event, payload)


def test_the_limits_fit_the_stores_columns() -> None:
    from bot.store import CommandNote, Workspace

    columns = Workspace.__table__.c
    notes = CommandNote.__table__.c
    assert columns.project_path.type.length >= hooks.MAX_PATH
    assert columns.source_branch.type.length >= hooks.MAX_PATH
    assert columns.project_http_url.type.length >= hooks.MAX_URL
    # A note's MR URL is stored as web_url + "/-/merge_requests/" + the iid.
    longest_mr_url = (
        hooks.MAX_URL + len("/-/merge_requests/") + len(str(hooks.MAX_STORED_ID))
    )
    assert longest_mr_url <= columns.mr_url.type.length
    assert columns.mr_state.type.length >= hooks.MAX_STATE
    assert notes.author_username.type.length >= hooks.MAX_USERNAME
    assert notes.discussion_id.type.length >= hooks.MAX_DISCUSSION_ID


def test_errors_are_bot_errors_with_a_status() -> None:
    assert issubclass(WebhookError, BotError)
    assert Unauthorized("x").status == 401
    assert Malformed("x").status == 400
    assert Malformed("why").reason == "why"


# --- fuzzing ----------------------------------------------------------------------


def assert_typed(result: hooks.Event) -> None:
    """Every field of a parsed event holds a value of its declared type."""
    assert isinstance(result, MergeRequestEvent | NoteEvent | Ignored)
    hints = typing.get_type_hints(type(result))
    for field in fields(result):
        value = getattr(result, field.name)
        assert matches(value, hints[field.name]), (field.name, value)


def matches(value: object, hint: object) -> bool:
    if isinstance(hint, types.UnionType):
        return any(matches(value, part) for part in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is int:
        return type(value) is int and 0 <= value <= hooks.MAX_ID
    if hint is datetime:
        return isinstance(value, datetime) and value.tzinfo == UTC
    assert isinstance(hint, type)
    return type(value) is hint


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["MergeRequest", "merge_request", "note", "a" * 40, "1"])
)
KEYS = st.sampled_from(
    [
        "object_kind",
        "object_attributes",
        "project",
        "user",
        "merge_request",
        "last_commit",
        "id",
        "iid",
        "noteable_type",
        "system",
        "username",
        "state",
        "updated_at",
        "oldrev",
    ]
) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=6)
    ),
    max_leaves=30,
)


def outcome(event: str | None, content_type: str | None, body: bytes) -> None:
    """Parse, allowing only WebhookError; check the types of what parses."""
    try:
        result = hooks.parse(event, content_type, body)
    except WebhookError as err:
        assert err.reason
        return
    assert_typed(result)


@given(st.sampled_from([MR, NOTE, "Push Hook", None]), st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_webhook_errors(
    event: str | None, body: bytes
) -> None:
    outcome(event, JSON, body)


@given(
    st.sampled_from([MR, NOTE]),
    st.sampled_from(["merge_request", "note"]),
    json_values,
    st.dictionaries(KEYS, json_values, max_size=6),
)
def test_arbitrary_json_never_raises_anything_but_webhook_errors(
    event: str, kind: str, value: object, extra: dict[str, object]
) -> None:
    outcome(event, JSON, json.dumps(value).encode())
    outcome(event, JSON, json.dumps({"object_kind": kind, **extra}).encode())


def paths(
    node: object, prefix: tuple[str | int, ...] = ()
) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside ``node``, as keys and list indexes."""
    if isinstance(node, dict):
        for key, child in node.items():
            yield (*prefix, key)
            yield from paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield (*prefix, index)
            yield from paths(child, (*prefix, index))


SAMPLE_NAMES = sorted(path.name for path in SAMPLES.glob("*.json"))
SAMPLE_PATHS = {name: list(paths(load(name))) for name in SAMPLE_NAMES}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_samples_never_raise_anything_but_webhook_errors(
    data: st.DataObject,
) -> None:
    name = data.draw(st.sampled_from(SAMPLE_NAMES))
    payload = copy.deepcopy(load(name))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        candidates = list(paths(payload))
        if not candidates:
            break
        path = data.draw(st.sampled_from(candidates))
        *parents, last = path
        node: Any = payload
        for step in parents:
            node = node[step]
        if isinstance(node, dict) and data.draw(st.booleans()):
            del node[last]
        else:
            node[last] = data.draw(json_values)

    outcome(event_for(name), JSON, json.dumps(payload).encode())


@given(
    st.one_of(st.none(), st.text(max_size=30)),
    st.one_of(st.none(), st.text(max_size=40)),
)
def test_arbitrary_headers_to_parse_never_raise_anything_but_webhook_errors(
    event: str | None, content_type: str | None
) -> None:
    outcome(event, content_type, (SAMPLES / "mr_open.json").read_bytes())


header_names = st.sampled_from(
    ["webhook-id", "Webhook-Timestamp", "WEBHOOK-SIGNATURE", "x", "Idempotency-Key"]
) | st.text(max_size=10)


@given(st.dictionaries(header_names, st.text(max_size=60), max_size=5), st.binary())
def test_arbitrary_signature_headers_are_only_ever_unauthorized(
    headers: dict[str, str], body: bytes
) -> None:
    with pytest.raises(Unauthorized):
        hooks.verify_signature(SECRET, headers, body, now=NOW)


@given(st.dictionaries(header_names, st.text(max_size=250), max_size=5), st.binary())
def test_arbitrary_headers_give_a_bounded_key_or_malformed(
    headers: dict[str, str], body: bytes
) -> None:
    try:
        key = hooks.delivery_key(headers, body)
    except Malformed:
        return
    assert 0 < len(key) <= hooks.MAX_KEY_LENGTH
    assert key.isascii() and key.isprintable()


@given(st.one_of(st.none(), st.text(max_size=40)))
def test_arbitrary_tokens_are_accepted_only_when_equal(given_token: str | None) -> None:
    if given_token == "s3cret-token":
        hooks.verify_token("s3cret-token", given_token)
        return
    with pytest.raises(Unauthorized):
        hooks.verify_token("s3cret-token", given_token)
