"""Shared fixtures: real Podman and PostgreSQL services, and test settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import harness, services


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """DOCKER_HOST of a rootful Podman API service started for this session."""
    with services.podman_service() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL server started for this session."""
    with services.postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str:
    """A fresh, empty database: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/rwbot.db"
    server = request.getfixturevalue("postgres_url")
    return services.create_database(server)


@pytest.fixture
def store(database_url):
    """A migrated store on each supported database."""
    from bot.store import Store

    s = Store(database_url)
    s.migrate()
    yield s
    s.dispose()


@pytest.fixture
def stack(request, docker_host, tmp_path):
    """GitLab double, an in-process bot and real Podman (see tests/harness.py).

    ``@pytest.mark.stack_settings(idle_timeout=8, ...)`` changes the bot's
    settings for one test.
    """
    marker = request.node.get_closest_marker("stack_settings")
    s = harness.Stack(docker_host, tmp_path, **(marker.kwargs if marker else {}))
    yield s
    s.close()
