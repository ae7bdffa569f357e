"""The webhook endpoint: verify, record, answer.

Cases: a valid MR event is recorded and creates the MR's row; a redelivery with
the same Idempotency-Key is recognised and changes nothing; a wrong or missing
secret is 401 and stores nothing; a bad signature is 401 when signing is on;
malformed bodies are 400 with a reason; events the bot does not use still get
200 (GitLab disables hooks that fail); oversized bodies are refused; comments by
the bot itself are ignored; merge after open leaves the MR wanted gone; only
POST is answered; the path on a workspace endpoint's host is not the bot's.
"""

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.app import create_app
from bot.gitlab import Client
from bot.settings import Settings
from bot.store import Delivery, Workspace

SAMPLES = Path(__file__).parent / "samples"
WEBHOOK_SECRET = "s3cret"
SIGNING = "whsec_" + base64.b64encode(b"k" * 32).decode()


def sample(name):
    return (SAMPLES / name).read_bytes()


@pytest.fixture
def settings(tmp_path):
    return Settings(
        gitlab_url="http://127.0.0.1:9",
        gitlab_token="tok",
        webhook_secret="s3cret",
        public_url="http://bot.test",
        database_url=f"sqlite:///{tmp_path}/db.sqlite",
        bot_user_id=99,
    )


@pytest.fixture
def client(store, settings):
    app = create_app(settings, store=store, gitlab=Client(settings))
    return app.test_client()


def post(
    client, body, event="Merge Request Hook", secret=WEBHOOK_SECRET, key=None, **headers
):
    h = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": event,
        "Idempotency-Key": key or str(uuid.uuid4()),
        **headers,
    }
    if secret is not None:
        h["X-Gitlab-Token"] = secret
    return client.post("/webhooks/gitlab", data=body, headers=h)


def rows(store, model):
    with store.session() as s:
        return s.scalars(sa.select(model)).all()


def test_an_opened_merge_request_is_recorded_and_wanted_running(client, store):
    r = post(client, sample("mr_open.json"))
    assert r.status_code == 200
    assert r.json == {"status": "applied"}
    (ws,) = rows(store, Workspace)
    assert (ws.project_id, ws.mr_iid, ws.desired, ws.mr_state) == (
        14,
        1,
        "running",
        "opened",
    )
    assert ws.due_at is not None


def test_a_redelivery_is_recognised_and_changes_nothing(client, store):
    assert post(client, sample("mr_open.json"), key="k-1").json == {"status": "applied"}
    assert post(client, sample("mr_open.json"), key="k-1").json == {
        "status": "duplicate"
    }
    assert len(rows(store, Delivery)) == 1


@pytest.mark.parametrize("secret", [None, "wrong", "s3cret-and-more", ""])
def test_a_wrong_or_missing_secret_is_refused_and_nothing_stored(client, store, secret):
    r = post(client, sample("mr_open.json"), secret=secret)
    assert r.status_code == 401
    assert rows(store, Delivery) == [] and rows(store, Workspace) == []


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"{not json", "application/json", "JSON"),
        (b"[]", "application/json", "object"),
        (b'{"object_kind": "merge_request"}', "application/json", "missing"),
        (sample("mr_open.json"), "text/plain", "Content-Type"),
    ],
)
def test_malformed_bodies_get_400_with_a_reason(
    client, store, body, content_type, reason
):
    r = post(client, body, **{"Content-Type": content_type})
    assert r.status_code == 400
    assert reason.lower() in r.json["error"].lower()
    assert rows(store, Delivery) == []


def test_events_the_bot_does_not_use_still_get_200(client, store):
    r = post(client, sample("push.json"), event="Push Hook")
    assert r.status_code == 200
    assert r.json == {"status": "ignored"}
    assert rows(store, Workspace) == []


def test_an_oversized_body_is_refused(store, settings):
    app = create_app(
        settings.with_overrides(max_body_bytes=1000),
        store=store,
        gitlab=Client(settings),
    )
    r = post(app.test_client(), b"{" + b" " * 2000 + b"}")
    assert r.status_code == 413
    assert rows(store, Delivery) == []


def test_a_note_by_the_bot_itself_is_ignored(client, store):
    note = json.loads(sample("note_mr_create.json"))
    note["object_attributes"]["author_id"] = 99
    note["user"]["id"] = 99
    r = post(client, json.dumps(note).encode(), event="Note Hook")
    assert r.json == {"status": "ignored"}


def test_merge_after_open_leaves_the_workspace_wanted_gone(client, store):
    post(client, sample("mr_open.json"))
    post(client, sample("mr_merge.json"))
    (ws,) = rows(store, Workspace)
    assert (ws.desired, ws.mr_state) == ("gone", "merged")


def test_an_old_open_arriving_after_the_merge_does_not_revive_it(client, store):
    post(client, sample("mr_merge.json"))
    opened = json.loads(sample("mr_open.json"))
    opened["object_attributes"]["updated_at"] = "2001-01-01T00:00:00Z"
    assert post(client, json.dumps(opened).encode()).json == {"status": "unchanged"}
    (ws,) = rows(store, Workspace)
    assert ws.desired == "gone"


def signed(body, secret=SIGNING, at=None, msg_id="msg_1"):
    ts = str(int(at if at is not None else time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def test_with_signing_on_a_valid_signature_is_accepted_and_a_stale_one_refused(
    store, settings
):
    app = create_app(
        settings.with_overrides(webhook_signing_secret=SIGNING),
        store=store,
        gitlab=Client(settings),
    )
    c = app.test_client()
    body = sample("mr_open.json")
    assert post(c, body).status_code == 401  # signature required
    assert post(c, body, **signed(body)).status_code == 200
    replay = signed(body, at=time.time() - 600, msg_id="msg_2")
    assert post(c, body, **replay).status_code == 401
    tampered = signed(body, msg_id="msg_3")
    assert post(c, body + b" ", **tampered).status_code == 401


def test_only_post_is_answered(client, store):
    r = client.get("/webhooks/gitlab")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert rows(store, Delivery) == []


def test_the_path_on_an_endpoint_host_belongs_to_the_workspace(store, settings):
    app = create_app(
        settings.with_overrides(endpoints_domain="endpoints.test"),
        store=store,
        gitlab=Client(settings),
    )
    r = post(
        app.test_client(), sample("mr_open.json"), Host="web--p1-mr2.endpoints.test"
    )
    # The endpoint proxy's page (a POST without the endpoint's cookie), not ours.
    assert r.status_code == 401 and r.mimetype == "text/html"
    assert rows(store, Delivery) == []
    r = post(app.test_client(), sample("mr_open.json"), Host="bot.test")
    assert r.status_code == 200
