"""Runtimes that run review workspaces; see :mod:`bot.runtime.base`.

:func:`from_settings` picks the one the installation is configured for, so the
rest of the bot never names a runtime.
"""

from __future__ import annotations

import os

from bot.runtime.base import Runtime
from bot.settings import Settings


def from_settings(settings: Settings) -> Runtime:
    if settings.runtime == "kubernetes":
        from bot.gitlab import Client
        from bot.runtime.kube.config import config_from_env
        from bot.runtime.kubernetes import KubernetesRuntime

        # The runtime mints each workspace's clone token with the bot's client.
        return KubernetesRuntime.from_cluster(
            config_from_env(os.environ), settings.instance, Client(settings)
        )
    from bot.runtime.docker import DockerRuntime

    return DockerRuntime.from_env(settings.instance)
