"""Waking reconcilers in other processes when a delivery leaves work.

In ``rwbot serve`` the receiver wakes the reconciler of its own process through
a :class:`threading.Event`. On a split install (web replicas apart from
``rwbot worker`` processes, PostgreSQL) the intake's transaction also issues
``NOTIFY``, which PostgreSQL delivers to every listening session when, and only
if, that transaction commits
(https://www.postgresql.org/docs/current/sql-notify.html). Each worker keeps
one connection of its own that ``LISTEN``\\s, and a :class:`Listener` thread
turns what it hears into the same event, so ``Reconciler.run_forever`` needs no
other wake-up. A lost connection costs no more than the idle pause: the worker
still looks on its own schedule while the listener reconnects.

SQLite has no such thing; there nothing changes.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import sqlalchemy as sa

from bot.store import Store

log = logging.getLogger(__name__)

CHANNEL = "rwbot_work"
#: How the listening sessions show in ``pg_stat_activity``, unless the
#: database URL names another application.
APPLICATION_NAME = "rwbot-wakeup"
_NOTIFY = sa.text(f"NOTIFY {CHANNEL}")


def notify(conn: sa.Connection) -> None:
    """Wake listening workers once ``conn``'s transaction commits (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY)


def listen(store: Store, wake: threading.Event) -> Listener | None:
    """A started :class:`Listener` for ``store``; None on SQLite."""
    if store.engine.dialect.name != "postgresql":
        return None
    return Listener(store, wake).start()


class Listener:
    """Sets ``wake`` for every notification on :data:`CHANNEL`.

    Runs in a daemon thread on a dedicated autocommit connection (a pooled one
    would be handed to other work between notifications). When the connection
    is lost it is opened again after a pause that doubles up to
    ``max_backoff``; the loss is logged once, the recovery once. Every new
    connection sets ``wake`` as well: what was notified while none listened
    is lost, so the worker looks once instead.
    """

    #: How often the thread looks at ``close()`` while no notification comes.
    POLL = 0.5
    #: Seconds of quiet after which the connection is checked with a query: a
    #: peer that vanished without closing the socket sends no error to notice.
    CHECK_EVERY = 30.0

    def __init__(
        self,
        store: Store,
        wake: threading.Event,
        *,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.wake = wake
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        #: How many times a connection started listening (for tests, metrics).
        self.connections = 0
        url = store.engine.url
        self._args, self._params = store.engine.dialect.create_connect_args(url)
        self._params.setdefault("application_name", APPLICATION_NAME)
        self._closing = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="wakeup-listener", daemon=True
        )

    def start(self) -> Listener:
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._closing.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._closing.is_set():
            try:
                with self._connect() as conn:
                    if failures:
                        log.info("wake-up listener reconnected")
                    failures = 0
                    self.connections += 1
                    self.wake.set()
                    self._hear(conn)
            except Exception as err:
                if not failures:
                    _log_loss(err)
                failures += 1
                pause = self.min_backoff * 2 ** min(failures - 1, 16)
                self._closing.wait(min(pause, self.max_backoff))

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        conn = psycopg.connect(*self._args, autocommit=True, **self._params)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _hear(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        checked = time.monotonic()
        while not self._closing.is_set():
            heard = False
            # Notifications that arrive between two calls are kept by psycopg
            # and come first in the next one.
            for _ in conn.notifies(timeout=self.POLL, stop_after=1):
                heard = True
                self.wake.set()
            if heard:
                checked = time.monotonic()
            elif time.monotonic() - checked >= self.CHECK_EVERY:
                conn.execute("SELECT 1")
                checked = time.monotonic()


def _log_loss(err: Exception) -> None:
    if isinstance(err, psycopg.Error):
        reason = (str(err).strip().splitlines() or ["unknown"])[0]
        log.warning("wake-up listener lost", extra={"error": reason})
    else:  # a bug; the worker still looks after each idle pause meanwhile
        log.exception("wake-up listener failed")
