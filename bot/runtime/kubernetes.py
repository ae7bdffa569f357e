"""Review workspaces on Kubernetes: one namespace per merge request.

Each workspace is a namespace labelled as ours holding a one-replica Deployment
(checkout cloned by an init container), a PersistentVolumeClaim for /workspace
and /home, a NetworkPolicy, a ResourceQuota, a LimitRange, the ``rwbot-tools``
ConfigMap (``rwctl``) and, until the clone has finished, the clone credential
Secret. Stopping scales the Deployment to zero and keeps the volume; removing
deletes the namespace, which takes everything with it. The objects come from
templates (:mod:`bot.runtime.kube.manifests`).

Why a Deployment and not a StatefulSet: the volume is an ordinary PVC we create
ourselves, so it outlives scaling either way, and a StatefulSet whose pod is
broken needs the pod deleted by hand before a fixed template rolls out, while a
Deployment with the Recreate strategy simply replaces it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config

from bot.errors import ConfigError, TemporaryError
from bot.runtime import base
from bot.runtime.kube import api, diagnose, manifests, stream
from bot.runtime.kube.config import KubernetesConfig, config_from_env

__all__ = ["KubernetesConfig", "KubernetesRuntime", "config_from_env"]

log = logging.getLogger(__name__)

#: Oldest and newest Kubernetes minor the manifests and chart are checked against.
SUPPORTED_KUBERNETES = ("1.29", "1.37")

_PAGE = 500


class KubernetesRuntime(base.Runtime):
    """Runs workspaces in a cluster through the official client."""

    def __init__(
        self,
        api_client: client.ApiClient,
        config: KubernetesConfig,
        instance: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._instance = instance
        self._clock = clock
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._net = client.NetworkingV1Api(api_client)
        self._api = api.Api()
        self._exec = stream.Connector(api_client)
        self._renderer = manifests.Renderer(config, instance)

    @classmethod
    def from_cluster(cls, config: KubernetesConfig, instance: str) -> KubernetesRuntime:
        """Use the pod's service account, or the kubeconfig outside a cluster."""
        try:
            kube_config.load_incluster_config()
        except kube_config.ConfigException:
            try:
                kube_config.load_kube_config()
            except (kube_config.ConfigException, OSError) as err:
                raise ConfigError(f"no Kubernetes configuration found: {err}") from err
        return cls(client.ApiClient(), config, instance)

    # -- lifecycle -----------------------------------------------------------

    def ensure_running(self, spec: base.Spec) -> base.Status:
        namespace = self._renderer.namespace(spec.key)
        current = self._read_namespace(namespace)
        if current is not None and _terminating(current):
            return base.Status(base.Phase.STARTING, generation=spec.generation)
        if current is not None and _generation(current) != spec.generation:
            log.info(
                "replacing workspace of an older generation",
                extra={"namespace": namespace, "generation": spec.generation},
            )
            self._delete_namespace(namespace)
            return base.Status(base.Phase.STARTING, generation=spec.generation)

        objects = self._renderer.render(spec, started_at=self._clock())
        if current is None:
            made = self._create(
                "namespaces", self._core.create_namespace, objects["Namespace"]
            )
            if made is None:  # created meanwhile, by another worker: ours?
                self._read_namespace(namespace)
        deployment = self._read_deployment(namespace)
        if deployment is None:
            for kind in (
                "ConfigMap",
                "Secret",
                "PersistentVolumeClaim",
                "NetworkPolicy",
                "ResourceQuota",
                "LimitRange",
            ):
                self._apply(kind, objects[kind])
            created = self._create(
                "deployments.apps",
                self._apps.create_namespaced_deployment,
                objects["Deployment"],
                namespace,
            )
            if created is not None:
                log.info("workspace created", extra={"namespace": namespace})
                return base.Status(base.Phase.STARTING, generation=spec.generation)
            deployment = self._read_deployment(namespace) or {}

        if (deployment.get("spec") or {}).get("replicas"):
            return self.status(spec.key)
        self._start(namespace, objects, deployment)
        return base.Status(base.Phase.STARTING, generation=spec.generation)

    def _start(
        self, namespace: str, objects: dict[str, Any], deployment: dict[str, Any]
    ) -> None:
        """Scale a stopped workspace up, refreshing what may have changed since."""
        kinds = ["ConfigMap", "NetworkPolicy", "ResourceQuota", "LimitRange"]
        if _annotation(deployment, manifests.CHECKOUT) != "done":
            kinds.append("Secret")  # the clone has not finished: hand a fresh token
        for kind in kinds:
            self._apply(kind, objects[kind])
        self._patch_deployment(
            namespace,
            {
                "metadata": {
                    "annotations": {manifests.STARTED_AT: f"{self._clock():.3f}"}
                },
                "spec": {"replicas": 1},
            },
        )
        log.info("workspace started", extra={"namespace": namespace})

    def stop(self, key: base.WorkspaceKey) -> None:
        namespace = self._renderer.namespace(key)
        self._patch_deployment(namespace, {"spec": {"replicas": 0}}, missing_ok=True)

    def remove(self, key: base.WorkspaceKey) -> None:
        namespace = self._renderer.namespace(key)
        if self._read_namespace(namespace) is not None:
            self._delete_namespace(namespace)
            log.info("workspace removed", extra={"namespace": namespace})

    # -- status --------------------------------------------------------------

    def status(self, key: base.WorkspaceKey) -> base.Status:
        namespace = self._renderer.namespace(key)
        current = self._read_namespace(namespace)
        if current is None or _terminating(current):
            return base.Status(base.Phase.MISSING)
        generation = _generation(current)
        deployment = self._read_deployment(namespace)
        if deployment is None:
            return base.Status(base.Phase.MISSING, generation=generation)
        if not (deployment.get("spec") or {}).get("replicas"):
            return base.Status(base.Phase.STOPPED, generation=generation)

        pods = diagnose.live(self._list_pods(namespace))
        if _annotation(deployment, manifests.CHECKOUT) != "done" and any(
            diagnose.clone_finished(p) for p in pods
        ):
            self._forget_credential(namespace)
        if any(diagnose.is_ready(p) for p in pods):
            return base.Status(base.Phase.RUNNING, generation=generation)

        found = diagnose.problem(pods)
        started = float(_annotation(deployment, manifests.STARTED_AT) or self._clock())
        timed_out = self._clock() - started > self._config.ready_timeout
        if (found is None or not found.fatal) and not timed_out:
            return base.Status(base.Phase.STARTING, generation=generation)

        events = self._list(
            "list", "events", self._core.list_namespaced_event, namespace
        )
        reason = diagnose.reason(
            found, events, timed_out=timed_out, timeout=self._config.ready_timeout
        )
        log.info("workspace failed", extra={"namespace": namespace, "reason": reason})
        return base.Status(base.Phase.FAILED, reason=reason, generation=generation)

    def _forget_credential(self, namespace: str) -> None:
        """The clone is done: delete its credential, and remember that we did."""
        self._api.call(
            "delete",
            "secrets",
            self._core.delete_namespaced_secret,
            manifests.SECRET,
            namespace,
            namespace=namespace,
            missing_ok=True,
        )
        self._patch_deployment(
            namespace, {"metadata": {"annotations": {manifests.CHECKOUT: "done"}}}
        )
        log.info("clone credential deleted", extra={"namespace": namespace})

    def list_ours(self) -> Iterator[base.Listed]:
        selector = manifests.owner_selector(self._instance)
        for item in self._list(
            "list", "namespaces", self._core.list_namespace, label_selector=selector
        ):
            labels = (item.get("metadata") or {}).get("labels") or {}
            try:
                key = base.WorkspaceKey(
                    int(labels[base.LABEL_PROJECT]), int(labels[base.LABEL_MR])
                )
            except (KeyError, ValueError):
                log.warning("namespace with bad labels", extra={"labels": labels})
                continue
            yield base.Listed(key, _generation(item), item["metadata"]["name"])

    def ping(self) -> None:
        self._api.call(
            "list",
            "namespaces",
            self._core.list_namespace,
            label_selector=manifests.owner_selector(self._instance),
            limit=1,
        )

    # -- exec ----------------------------------------------------------------

    def exec(
        self, key: base.WorkspaceKey, argv: Sequence[str], *, user: str = "root"
    ) -> base.ExecResult:
        """Run ``argv``; as another user through ``runuser`` (the exec API has no
        user field), which needs util-linux in the workspace image."""
        if user != "root":
            argv = ["runuser", "-u", user, "--", *argv]
        namespace, pod = self._running_pod(key)
        ws = self._exec.open(namespace, pod, argv, tty=False)
        return stream.run(ws, self._config.exec_timeout)

    def open_terminal(
        self, key: base.WorkspaceKey, argv: Sequence[str], *, rows: int, cols: int
    ) -> base.Terminal:
        namespace, pod = self._running_pod(key)
        terminal = stream.KubeTerminal(self._exec.open(namespace, pod, argv, tty=True))
        terminal.resize(rows, cols)
        return terminal

    def _running_pod(self, key: base.WorkspaceKey) -> tuple[str, str]:
        namespace = self._renderer.namespace(key)
        pods = [
            p for p in diagnose.live(self._list_pods(namespace)) if diagnose.is_ready(p)
        ]
        if not pods:
            raise TemporaryError(f"workspace {namespace} has no running pod")
        return namespace, pods[0]["metadata"]["name"]

    # -- API helpers ---------------------------------------------------------

    def _read_namespace(self, name: str) -> dict[str, Any] | None:
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

    def _delete_namespace(self, name: str) -> None:
        self._api.call(
            "delete", "namespaces", self._core.delete_namespace, name, missing_ok=True
        )

    def _read_deployment(self, namespace: str) -> dict[str, Any] | None:
        return self._api.call(
            "get",
            "deployments.apps",
            self._apps.read_namespaced_deployment,
            manifests.DEPLOYMENT,
            namespace,
            namespace=namespace,
            missing_ok=True,
        )

    def _patch_deployment(
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

    def _list_pods(self, namespace: str) -> list[dict[str, Any]]:
        return self._list(
            "list",
            "pods",
            self._core.list_namespaced_pod,
            namespace,
            label_selector=f"{manifests.APP_LABEL[0]}={manifests.APP_LABEL[1]}",
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

    def _apply(self, kind: str, body: dict[str, Any]) -> None:
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


def _annotation(obj: dict[str, Any], name: str) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(name)
    return None if value is None else str(value)


def _generation(obj: dict[str, Any]) -> int:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    try:
        return int(labels.get(base.LABEL_GENERATION, 0))
    except ValueError:
        return 0


def _terminating(namespace: dict[str, Any]) -> bool:
    return (namespace.get("status") or {}).get("phase") == "Terminating"
