"""The workspace's objects as the cluster holds them: read, create, adopt, list.

The runtime (:mod:`bot.runtime.kubernetes`) decides; this module only says
each decision to the API, through :class:`bot.runtime.kube.api.Api`, so the
decisions read in the words of the domain and not of the client's methods.
Two rules live here because every caller needs them: a namespace that is not
this installation's is refused when read, so that a name clash never makes the
bot adopt or delete it; and what a previous attempt left behind is adopted
(replaced with what we want now), so that every step may be retried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client

from bot.errors import ConfigError
from bot.runtime import base
from bot.runtime.kube import api, manifests

_PAGE = 500


class Cluster:
    """The API calls the runtime makes, answering with dicts or our errors."""

    def __init__(self, api_client: client.ApiClient, instance: str) -> None:
        self._instance = instance
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._net = client.NetworkingV1Api(api_client)
        self._api = api.Api()

    def read_namespace(self, name: str) -> dict[str, Any] | None:
        """The namespace if it exists; refuse one that is not this installation's,
        so that a name clash never makes the bot adopt or delete it."""
        found = self._api.call(
            "get", "namespaces", self._core.read_namespace, name, missing_ok=True
        )
        labels = ((found or {}).get("metadata") or {}).get("labels") or {}
        if found is not None and (
            labels.get(base.MANAGED_BY) != base.MANAGED_BY_VALUE
            or labels.get(base.LABEL_INSTANCE) != self._instance
        ):
            raise ConfigError(f"namespace {name} exists but is not this bot's")
        return found

    def create_namespace(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create the namespace; ``None`` when it already exists."""
        return self._create("namespaces", self._core.create_namespace, body)

    def delete_namespace(self, name: str) -> None:
        self._api.call(
            "delete", "namespaces", self._core.delete_namespace, name, missing_ok=True
        )

    def our_namespaces(self) -> list[dict[str, Any]]:
        """Every namespace labelled as this installation's."""
        selector = manifests.owner_selector(self._instance)
        return self._list(
            "list", "namespaces", self._core.list_namespace, label_selector=selector
        )

    def ping(self) -> None:
        self._api.call(
            "list",
            "namespaces",
            self._core.list_namespace,
            label_selector=manifests.owner_selector(self._instance),
            limit=1,
        )

    def read_deployment(self, namespace: str) -> dict[str, Any] | None:
        return self._api.call(
            "get",
            "deployments.apps",
            self._apps.read_namespaced_deployment,
            manifests.DEPLOYMENT,
            namespace,
            namespace=namespace,
            missing_ok=True,
        )

    def create_deployment(
        self, body: dict[str, Any], namespace: str
    ) -> dict[str, Any] | None:
        """Create the Deployment; ``None`` when it already exists."""
        return self._create(
            "deployments.apps",
            self._apps.create_namespaced_deployment,
            body,
            namespace,
        )

    def patch_deployment(
        self, namespace: str, patch: dict[str, Any], *, missing_ok: bool = False
    ) -> None:
        self._api.call(
            "patch",
            "deployments.apps",
            self._apps.patch_namespaced_deployment,
            manifests.DEPLOYMENT,
            namespace,
            patch,
            namespace=namespace,
            missing_ok=missing_ok,
        )

    def delete_secret(self, namespace: str) -> None:
        """Delete the clone credential's Secret, if it is still there."""
        self._api.call(
            "delete",
            "secrets",
            self._core.delete_namespaced_secret,
            manifests.SECRET,
            namespace,
            namespace=namespace,
            missing_ok=True,
        )

    def list_pods(self, namespace: str) -> list[dict[str, Any]]:
        return self._list(
            "list",
            "pods",
            self._core.list_namespaced_pod,
            namespace,
            label_selector=f"{manifests.APP_LABEL[0]}={manifests.APP_LABEL[1]}",
        )

    def list_events(self, namespace: str) -> list[dict[str, Any]]:
        return self._list("list", "events", self._core.list_namespaced_event, namespace)

    def apply(self, kind: str, body: dict[str, Any]) -> None:
        """Create, or adopt what a previous attempt left: replace it with what we
        want now. A PVC is adopted as it is (its spec is immutable once bound)."""
        resource, create, replace = self._methods(kind)
        namespace = body["metadata"]["namespace"]
        if self._create(resource, create, body, namespace) is not None:
            return
        if replace is None:
            return
        self._api.call(
            "update",
            resource,
            replace,
            body["metadata"]["name"],
            namespace,
            body,
            namespace=namespace,
        )

    def _list(
        self,
        verb: str,
        resource: str,
        method: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Every item of a list call, following ``continue`` tokens."""
        items: list[dict[str, Any]] = []
        token = None
        while True:
            page = self._api.call(
                verb, resource, method, *args, limit=_PAGE, _continue=token, **kwargs
            )
            page = page or {}
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    def _create(
        self,
        resource: str,
        method: Callable[..., Any],
        body: dict[str, Any],
        *args: Any,
    ) -> dict[str, Any] | None:
        """Create ``body``; ``None`` when it already exists."""
        namespace = body["metadata"].get("namespace")
        params = (*args, body) if args else (body,)
        return self._api.call(
            "create", resource, method, *params, namespace=namespace, exists_ok=True
        )

    def _methods(
        self, kind: str
    ) -> tuple[str, Callable[..., Any], Callable[..., Any] | None]:
        core, net = self._core, self._net
        return {
            "ConfigMap": (
                "configmaps",
                core.create_namespaced_config_map,
                core.replace_namespaced_config_map,
            ),
            "Secret": (
                "secrets",
                core.create_namespaced_secret,
                core.replace_namespaced_secret,
            ),
            "PersistentVolumeClaim": (
                "persistentvolumeclaims",
                core.create_namespaced_persistent_volume_claim,
                None,
            ),
            "NetworkPolicy": (
                "networkpolicies.networking.k8s.io",
                net.create_namespaced_network_policy,
                net.replace_namespaced_network_policy,
            ),
            "ResourceQuota": (
                "resourcequotas",
                core.create_namespaced_resource_quota,
                core.replace_namespaced_resource_quota,
            ),
            "LimitRange": (
                "limitranges",
                core.create_namespaced_limit_range,
                core.replace_namespaced_limit_range,
            ),
        }[kind]


def annotation(obj: dict[str, Any], name: str) -> str | None:
    """The value of one of ``obj``'s annotations, ``None`` when it has none."""
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(name)
    return None if value is None else str(value)
