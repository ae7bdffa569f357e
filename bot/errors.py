"""The bot's exceptions, classified by what the caller should do next.

- :class:`TemporaryError`: try again later (GitLab rate limit or outage, runtime
  hiccup). Carries an optional delay the other side asked for (``Retry-After``).
- :class:`PermanentError`: give up on this piece of work and tell the user; the
  ``reason`` is written for a person and ends up in the MR comment or a page.
- :class:`ConfigError`: the installation is wrong; stop and tell the operator.

Library errors (python-gitlab, docker, SQLAlchemy) are wrapped into these at the
module that talks to the library, with ``raise … from err``.
"""

from __future__ import annotations


class BotError(Exception):
    """Base of every error the bot raises on purpose."""


class TemporaryError(BotError):
    """The work may succeed if retried later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(BotError):
    """Retrying will not help; ``reason`` tells a person what went wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(BotError):
    """The bot is configured wrongly; an operator must fix it."""
