"""The webhook endpoint: verify, record, answer.

Cases: a valid MR event is recorded and creates the MR's row; a redelivery with
the same Idempotency-Key is recognised and changes nothing; a wrong or missing
secret is 401 and stores nothing; a bad signature is 401 when signing is on;
malformed bodies are 400 with a reason; events the bot does not use still get
200 (GitLab disables hooks that fail); oversized bodies are refused; comments by
the bot itself are ignored, or recorded while the bot's user is not known yet
(then learnt in the background, never in the request); merge after open leaves
the MR wanted gone; only POST is answered; the path on a workspace endpoint's
host is not the bot's; a delivery that gives the reconciler work wakes it, after
it is committed, and no other does; fuzzed payloads (the samples with fields
replaced by anything: other types, NUL, unpaired surrogates, very long text,
huge ids) through the real app on PostgreSQL only ever get 200 or 400, and a 400
stores nothing.
"""

import base64
import copy
import hashlib
import hmac
import json
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bot.app import create_app
from bot.gitlab import Client
from bot.settings import Settings
from bot.store import CommandNote, Delivery, Store, Workspace
from tests import services

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


def bot_command(note_id, author_id=99):
    note = json.loads(sample("note_mr_create.json"))
    note["object_attributes"].update(
        id=note_id, author_id=author_id, note="/workspace stop"
    )
    note["user"]["id"] = author_id
    return json.dumps(note).encode()


def test_a_note_by_the_bot_itself_is_ignored(client, store):
    r = post(client, bot_command(1), event="Note Hook")
    assert r.json == {"status": "ignored"}
    assert post(client, bot_command(2, author_id=7), event="Note Hook").json == {
        "status": "queued"
    }


def test_while_the_bot_user_is_unknown_its_notes_are_recorded_and_it_is_learnt(
    store, settings
):
    app = create_app(
        settings.with_overrides(bot_user_id=None), store=store, gitlab=Client(settings)
    )
    receiver = app.wsgi_app
    asked = []

    def whoami():
        asked.append("whoami")
        return 99

    receiver.learn_bot_user = whoami
    c = app.test_client()

    # Recorded: the reconciler, which knows the bot's user, skips it.
    assert post(c, bot_command(1), event="Note Hook").json == {"status": "queued"}
    services.wait_for(lambda: receiver.settings.bot_user_id == 99, what="learnt")
    assert post(c, bot_command(2), event="Note Hook").json == {"status": "ignored"}
    assert asked == ["whoami"]
    assert [n.note_id for n in rows(store, CommandNote)] == [1]


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


def test_an_event_header_with_control_characters_is_stored_escaped(client, store):
    r = post(client, sample("push.json"), event="Push\x00 Hook\x1b")
    assert r.status_code == 200 and r.json == {"status": "ignored"}
    (delivery,) = rows(store, Delivery)
    assert delivery.event == "Push\\x00 Hook\\x1b"


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


class Bell(threading.Event):
    """The reconciler's wake-up, noting how many rows were committed when rung."""

    def __init__(self, store):
        super().__init__()
        self.store = store
        self.rows_when_rung = []

    def set(self):
        self.rows_when_rung.append(len(rows(self.store, Workspace)))
        super().set()


def test_a_delivery_that_needs_work_wakes_the_reconciler_once_committed(
    store, settings
):
    bell = Bell(store)
    c = create_app(settings, store=store, gitlab=Client(settings), wake=bell)
    c = c.test_client()
    assert post(c, sample("mr_open.json"), key="k-1").json == {"status": "applied"}
    assert bell.rows_when_rung == [1]

    note = json.loads(sample("note_mr_create.json"))
    note["object_attributes"]["note"] = "/workspace status"
    r = post(c, json.dumps(note).encode(), event="Note Hook")
    assert r.json == {"status": "queued"}
    assert len(bell.rows_when_rung) == 2


def test_deliveries_that_change_nothing_do_not_wake_the_reconciler(store, settings):
    bell = Bell(store)
    c = create_app(settings, store=store, gitlab=Client(settings), wake=bell)
    c = c.test_client()
    post(c, sample("mr_open.json"), key="k-1")
    bell.clear()
    outcomes = [
        post(c, sample("mr_open.json"), key="k-1").json,  # the same delivery
        post(c, sample("mr_open.json")).json,  # the same event, another key
        post(c, sample("push.json"), event="Push Hook").json,
        post(c, sample("note_mr_create.json"), event="Note Hook").json,
    ]
    assert post(c, sample("mr_open.json"), secret="wrong").status_code == 401
    assert post(c, b"{not json").status_code == 400
    assert [o["status"] for o in outcomes] == [
        "duplicate",
        "unchanged",
        "ignored",
        "ignored",
    ]
    assert not bell.is_set()


# -- fuzzing through the real app on PostgreSQL, which refuses what SQLite takes --

LONG = st.builds(
    lambda char, n: char * n,
    st.sampled_from(["a", "é", "/", "\x00"]),
    st.sampled_from([17, 65, 256, 513, 1025, 5000, 70_000]),
)
ODD_TEXT = st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfff", "opened\x00"])
ANYTHING = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**31 - 2, max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | LONG
    | ODD_TEXT,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def leaf_paths(node, prefix=()):
    """Every path to a value inside ``node``, as keys and list indexes."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in items:
        yield (*prefix, key)
        if isinstance(child, dict | list):
            yield from leaf_paths(child, (*prefix, key))


def has(node, step):
    if isinstance(node, dict):
        return step in node
    return isinstance(node, list) and isinstance(step, int) and step < len(node)


def fuzz_bases():
    note = json.loads(sample("note_mr_create.json"))
    note["object_attributes"]["note"] = "/workspace status"  # stored when queued
    return {
        "Merge Request Hook": json.loads(sample("mr_open.json")),
        "Note Hook": note,
    }


BASES = fuzz_bases()
PATHS = {event: list(leaf_paths(payload)) for event, payload in BASES.items()}
#: The fields the bot reads, most of which the store keeps: drawn more often.
READ = {
    "Merge Request Hook": [
        ("project", "id"),
        ("project", "path_with_namespace"),
        ("project", "git_http_url"),
        ("project", "web_url"),
        ("object_attributes", "iid"),
        ("object_attributes", "title"),
        ("object_attributes", "state"),
        ("object_attributes", "source_branch"),
        ("object_attributes", "url"),
        ("object_attributes", "author_id"),
        ("object_attributes", "updated_at"),
        ("object_attributes", "last_commit", "id"),
        ("user", "username"),
    ],
    "Note Hook": [
        ("project", "id"),
        ("project", "path_with_namespace"),
        ("project", "git_http_url"),
        ("project", "web_url"),
        ("merge_request", "iid"),
        ("merge_request", "state"),
        ("object_attributes", "id"),
        ("object_attributes", "note"),
        ("object_attributes", "author_id"),
        ("object_attributes", "discussion_id"),
        ("user", "username"),
    ],
}


@pytest.fixture(scope="module")
def postgres_app(postgres_url, tmp_path_factory):
    store = Store(services.create_database(postgres_url))
    store.migrate()
    settings = Settings(
        gitlab_url="http://127.0.0.1:9",
        gitlab_token="tok",
        webhook_secret=WEBHOOK_SECRET,
        public_url="http://bot.test",
        database_url=store.engine.url.render_as_string(hide_password=False),
        bot_user_id=99,
    )
    app = create_app(settings, store=store, gitlab=Client(settings))
    yield app.test_client(), store
    store.dispose()


def stored(store):
    with store.session() as s:
        return tuple(
            s.scalar(sa.select(sa.func.count()).select_from(model))
            for model in (Delivery, Workspace, CommandNote)
        )


@pytest.mark.postgres
@hypothesis_settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_fuzzed_payloads_get_200_or_400_and_a_400_stores_nothing(postgres_app, data):
    client, store = postgres_app
    event = data.draw(st.sampled_from(sorted(BASES)))
    payload = copy.deepcopy(BASES[event])
    # A new MR (and note) each time, so that rows are inserted as well as updated.
    ids = st.integers(min_value=1, max_value=2**31 - 1)
    kind = "object_attributes" if event == "Merge Request Hook" else "merge_request"
    payload[kind]["iid"] = data.draw(ids)
    if event == "Note Hook":
        payload["object_attributes"]["id"] = data.draw(ids)
    fields = st.sampled_from(READ[event]) | st.sampled_from(PATHS[event])
    for path in data.draw(st.lists(fields, max_size=3)):
        *parents, last = path
        node = payload
        for step in parents:
            if not has(node, step):
                break  # an earlier replacement took this branch away
            node = node[step]
        else:
            if has(node, last):
                node[last] = data.draw(LONG | ODD_TEXT | ANYTHING)
    before = stored(store)

    r = post(client, json.dumps(payload).encode(), event=event)

    assert r.status_code in (200, 400), r.get_data(as_text=True)
    if r.status_code == 400:
        assert r.json["error"]
        assert stored(store) == before
