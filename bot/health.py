"""Health and metrics: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` only says the process answers (a liveness probe must not fail
because GitLab is down, or every replica would be restarted at once).
``/readyz`` checks that the store and GitLab can be reached.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify
from flask.typing import ResponseReturnValue
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bot.errors import BotError
from bot.store import Store, Workspace

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    problems = {}
    checks = {
        "store": current_app.config["RWBOT_STORE"].ping,
        "gitlab": current_app.config["RWBOT_GITLAB"].ping,
    }
    for name, check in checks.items():
        try:
            check()
        except BotError as err:
            problems[name] = str(err)
    if problems:
        return jsonify(status="unavailable", problems=problems), 503
    return jsonify(status="ok")


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    own: CollectorRegistry = current_app.config["RWBOT_METRICS"]
    body = generate_latest(REGISTRY) + generate_latest(own)
    return Response(body, mimetype="text/plain; version=0.0.4")


class WorkspaceCollector(Collector):
    """Workspaces by phase, counted in the store at scrape time, so every
    replica reports the same figures."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self):  # type: ignore[no-untyped-def]
        gauge = GaugeMetricFamily(
            "rwbot_workspaces", "Workspaces by phase", labels=["phase"]
        )
        try:
            with self._store.session() as session:
                rows = session.execute(
                    sa.select(Workspace.phase, sa.func.count()).group_by(
                        Workspace.phase
                    )
                ).all()
        except BotError:
            rows = []
        for phase, count in rows:
            gauge.add_metric([phase], count)
        yield gauge
