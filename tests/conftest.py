"""Shared fixtures: real Podman and PostgreSQL services, and test settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import services


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
