"""Workers woken by PostgreSQL NOTIFY from the intake's transaction (bot.wakeup).

Cases, on a real PostgreSQL: a delivery committed through the web app wakes a
listener on a connection of its own; a delivery whose transaction is rolled
back (a redelivery under a known key) notifies no one; a listener whose
connection is killed reconnects, says so once, and is woken again; on SQLite
there is nothing to listen to and deliveries still record.
"""

import json
import logging
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from bot import wakeup
from bot.app import create_app
from bot.gitlab import Client
from bot.settings import Settings
from bot.store import Store
from tests import services

MR_OPEN = (Path(__file__).parent / "samples" / "mr_open.json").read_bytes()


@pytest.fixture
def pg_store(postgres_url):
    s = Store(services.create_database(postgres_url))
    s.migrate()
    yield s
    s.dispose()


def web(store):
    settings = Settings(
        gitlab_url="http://127.0.0.1:9",
        gitlab_token="tok",
        webhook_secret="s3cret",
        public_url="http://bot.test",
        database_url=store.url,
        bot_user_id=99,
    )
    return create_app(settings, store=store, gitlab=Client(settings)).test_client()


def deliver(client, body, key=None):
    r = client.post(
        "/webhooks/gitlab",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Gitlab-Event": "Merge Request Hook",
            "X-Gitlab-Token": "s3cret",
            "Idempotency-Key": key or str(uuid.uuid4()),
        },
    )
    return r.json["status"]


def closed(body):
    event = json.loads(body)
    event["object_attributes"].update(state="closed", action="close")
    return json.dumps(event).encode()


def raw_connection(store):
    url = sa.make_url(store.url)
    return psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        dbname=url.database,
        autocommit=True,
    )


@pytest.fixture
def listening(pg_store):
    wake = threading.Event()
    listener = wakeup.Listener(pg_store, wake, min_backoff=0.05, max_backoff=0.2)
    listener.start()
    services.wait_for(lambda: listener.connections == 1, what="listening")
    yield listener
    listener.close()


def test_a_committed_delivery_wakes_a_listener_on_another_connection(
    pg_store, listening
):
    listening.wake.clear()  # set once on connecting

    assert deliver(web(pg_store), MR_OPEN) == "applied"

    services.wait_for(listening.wake.is_set, timeout=10, what="the wake-up")


def test_a_rolled_back_delivery_notifies_no_one(pg_store):
    client = web(pg_store)
    with raw_connection(pg_store) as conn:
        conn.execute(f"LISTEN {wakeup.CHANNEL}")

        assert deliver(client, MR_OPEN, key="k-1") == "applied"
        # The same key again, with news: applied, notified, then rolled back.
        assert deliver(client, closed(MR_OPEN), key="k-1") == "duplicate"
        conn.execute(f"NOTIFY {wakeup.CHANNEL}, 'marker'")
        heard = []
        for note in conn.notifies(timeout=10):
            heard.append(note.payload)
            if note.payload == "marker":
                break

    # Notifications come in commit order: one for the first delivery only.
    assert heard == ["", "marker"]
    # The rolled-back delivery had work in it: under a new key it applies.
    assert deliver(client, closed(MR_OPEN)) == "applied"


def test_a_killed_listener_connection_reconnects_and_still_wakes(
    pg_store, listening, caplog
):
    caplog.set_level(logging.INFO, logger="bot.wakeup")
    with raw_connection(pg_store) as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            [wakeup.APPLICATION_NAME],
        ).fetchall()
    assert killed == [(True,)]

    services.wait_for(lambda: listening.connections == 2, what="reconnected")
    listening.wake.clear()
    assert deliver(web(pg_store), MR_OPEN) == "applied"

    services.wait_for(listening.wake.is_set, timeout=10, what="the wake-up")
    messages = [r.getMessage() for r in caplog.records if r.name == "bot.wakeup"]
    assert messages == ["wake-up listener lost", "wake-up listener reconnected"]


def test_on_sqlite_nothing_listens_and_deliveries_still_record(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/rwbot.db")
    store.migrate()

    assert wakeup.listen(store, threading.Event()) is None
    assert deliver(web(store), MR_OPEN) == "applied"
