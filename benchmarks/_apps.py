"""WSGI app factories that gunicorn serves during the intake benchmark.

``gunicorn "benchmarks._apps:bot_app()"`` serves the real bot, configured from
``RWBOT_*`` variables exactly as in production; ``bare_app()`` is the baseline:
a Flask app on the same server settings whose webhook route only answers 200,
so the difference between the two is what the bot's own work costs.
"""

from __future__ import annotations

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from bot import app as bot_app_module
from bot import logs
from bot import settings as settings_mod

WEBHOOK_PATH = "/webhooks/gitlab"


def bot_app() -> Flask:
    """The bot's app, configured from ``RWBOT_*`` and logging as in production.

    Settings are passed in rather than left to ``create_app()``, which would
    also ask GitLab who the bot is and connect a runtime: intake needs neither,
    and the benchmark has no GitLab.
    """
    settings = settings_mod.from_env()
    secrets = bot_app_module.secrets_of(settings)
    logs.configure(settings.log_format, settings.log_level, secrets)

    return bot_app_module.create_app(settings)


def bare_app() -> Flask:
    app = Flask("bare")

    @app.post(WEBHOOK_PATH)
    def receive() -> ResponseReturnValue:
        return jsonify(status="ok"), 200

    return app
