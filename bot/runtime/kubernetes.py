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

A devfile in the commit is read by the bot before the Deployment is written
(:mod:`bot.runtime.kube.checkout`) and shapes its container; its postStart
commands run over exec once the pod is ready, in every new pod (each has a new
root filesystem), and the workspace counts as running only after they have.
``sync`` sends a git bundle through exec's stdin.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config

from bot import accounts, git
from bot.errors import ConfigError, PermanentError, TemporaryError
from bot.runtime import base, workspace
from bot.runtime.kube import api, checkout, diagnose, manifests, stream
from bot.runtime.kube.config import KubernetesConfig, config_from_env

__all__ = ["KubernetesConfig", "KubernetesRuntime", "config_from_env"]

log = logging.getLogger(__name__)

#: Oldest and newest Kubernetes minor the manifests and chart are checked against.
SUPPORTED_KUBERNETES = ("1.29", "1.37")

_PAGE = 500

#: Runs in the postStart command's directory (a devfile's workingDir, else the
#: checkout): exec has no working directory of its own.
_IN_DIRECTORY = 'cd "$1" || exit; shift; exec sh -c "$@"'
#: Reads a bundle of exactly $2 bytes from stdin (exec over WebSocket cannot
#: close stdin), then fast-forwards the checkout $1 to $3; git refuses, and
#: changes nothing, when local changes or local commits would be affected. The
#: file is made by mktemp (a new name, mode 0600), so nothing a user planted in
#: /tmp can stand in for it.
_SYNC_SCRIPT = (
    'umask 002; cd "$1" || exit 1; '
    "bundle=$(mktemp /tmp/rwbot-sync.XXXXXXXX) || exit 1; "
    'head -c "$2" >"$bundle"; '
    'if [ "$(wc -c <"$bundle" | tr -d " ")" != "$2" ]; then '
    'echo "the commits arrived incomplete" >&2; rm -f "$bundle"; exit 1; fi; '
    'git fetch -q "$bundle" "+refs/heads/mr-head:refs/remotes/origin/mr-head" '
    '&& git merge --ff-only -q "$3"; rc=$?; rm -f "$bundle"; exit $rc'
)


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

        manifests.check_source(spec.source)
        deployment = None if current is None else self._read_deployment(namespace)
        if deployment is not None:
            return self._resume(spec, namespace, deployment)

        # The devfile is read from the commit being run before anything is
        # made, so a devfile that cannot be used leaves nothing behind.
        shape = manifests.shape_for(
            spec, self._config, checkout.devfile_plan(spec.source, spec.devfile)
        )
        objects = self._renderer.render(spec, started_at=self._clock(), shape=shape)
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
                return base.Status(
                    base.Phase.STARTING, generation=spec.generation, notes=shape.notes
                )
            deployment = self._read_deployment(namespace) or {}
        return self._resume(spec, namespace, deployment)

    def _resume(
        self, spec: base.Spec, namespace: str, deployment: dict[str, Any]
    ) -> base.Status:
        """An existing workspace: finish preparing it if its pod is ready, else
        start it if it is stopped."""
        if (deployment.get("spec") or {}).get("replicas"):
            pod = self._ready_pod(namespace)
            if pod is not None and _post_start_pending(deployment, pod):
                notes = self._post_start(namespace, deployment, pod)
                return base.Status(
                    base.Phase.RUNNING, generation=spec.generation, notes=notes
                )
            return self.status(spec.key)

        # Only the objects that do not describe the container are refreshed:
        # the quota and limit range follow the container as it was created.
        shape = manifests.created_shape(
            deployment, manifests.shape_for(spec, self._config, None)
        )
        objects = self._renderer.render(spec, started_at=self._clock(), shape=shape)
        self._start(namespace, objects, deployment)
        return base.Status(base.Phase.STARTING, generation=spec.generation)

    def _post_start(
        self, namespace: str, deployment: dict[str, Any], pod: dict[str, Any]
    ) -> tuple[str, ...]:
        """Run the devfile's postStart commands in order in ``pod``, output to
        the log in the workspace, as the Docker runtime does; a failing one is
        reported and the rest still run. Returns every note of the workspace."""
        steps = manifests.post_start_of(deployment)
        notes = list(manifests.notes_of(deployment))
        for step in steps:
            argv = [
                "sh",
                "-c",
                _IN_DIRECTORY,
                "post-start",
                step.directory,
                workspace.POST_START_SCRIPT,
                "post-start",
                step.command_line,
                workspace.POST_START_LOG,
            ]
            ws = self._exec.open(namespace, pod["metadata"]["name"], argv, tty=False)
            try:
                code = stream.run(ws, self._config.exec_timeout).exit_code
            except TemporaryError as err:
                notes.append(f"postStart command {step.id} did not finish: {err}")
                continue
            if code != 0:
                notes.append(
                    f"postStart command {step.id} failed (exit {code}); its "
                    f"output is in {workspace.POST_START_LOG}"
                )
        notes.append(
            f"Ran {len(steps)} postStart command(s); output in "
            f"{workspace.POST_START_LOG}"
        )
        self._patch_deployment(
            namespace,
            {"metadata": {"annotations": {manifests.POST_START_POD: _uid(pod)}}},
        )
        log.info(
            "post-start commands ran",
            extra={"namespace": namespace, "commands": len(steps)},
        )
        return tuple(notes)

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
        ready = [p for p in pods if diagnose.is_ready(p)]
        if ready and _post_start_pending(deployment, ready[0]):
            # Ready, but not prepared: ensure_running runs the commands.
            return base.Status(base.Phase.STARTING, generation=generation)
        if ready:
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

    def sync(
        self, key: base.WorkspaceKey, source: base.Source, checkout_dir: str
    ) -> base.ExecResult:
        """Fast-forward the checkout to ``source.sha`` with a bundle of only the
        new commits, made by the bot (:func:`bot.git.bundle`) and sent through
        exec's stdin, so the workspace needs neither a credential nor a route
        to GitLab."""
        head = self.exec(key, ["git", "-C", checkout_dir, "rev-parse", "-q", "HEAD"])
        since = head.output.decode(errors="replace").strip()
        if head.exit_code != 0 or not _is_commit_id(since):
            since = source.sha
        with tempfile.TemporaryDirectory(prefix="rwbot-sync-") as tmp:
            path = Path(tmp) / "sync.bundle"
            git.bundle(source.url, source.ref, source.sha, since, source.token, path)
            data = path.read_bytes()

        namespace, pod = self._running_pod(key)
        argv = ["sh", "-c", _SYNC_SCRIPT, "sync", checkout_dir, str(len(data))]
        ws = self._exec.open(namespace, pod, [*argv, source.sha], tty=False, stdin=True)
        return stream.run(ws, self._config.exec_timeout, stdin=data)

    @property
    def uid_policy(self) -> accounts.UidPolicy:
        """In a user namespace (``hostUsers: false``) a pod maps only uids
        0-65535, so uids are chosen by the tool in the workspace."""
        return "gitlab-id" if self._config.host_users else "auto"

    def open_terminal(
        self, key: base.WorkspaceKey, argv: Sequence[str], *, rows: int, cols: int
    ) -> base.Terminal:
        namespace, pod = self._running_pod(key)
        terminal = stream.KubeTerminal(self._exec.open(namespace, pod, argv, tty=True))
        terminal.resize(rows, cols)
        return terminal

    def endpoint(self, key: base.WorkspaceKey, name: str) -> base.EndpointTarget:
        """The ready pod's IP; the workspace's NetworkPolicy admits the bot's
        pods (``RWBOT_K8S_BOT_NAMESPACE`` and pod labels) on every port."""
        namespace = self._renderer.namespace(key)
        deployment = self._read_deployment(namespace)
        if deployment is None or not (deployment.get("spec") or {}).get("replicas"):
            raise PermanentError("The workspace is not running.")
        record = _annotation(deployment, base.ENDPOINTS)
        port, path = workspace.endpoint_in(record, name)
        pod = self._ready_pod(namespace)
        address = ((pod or {}).get("status") or {}).get("podIP")
        if not address:
            raise PermanentError("The workspace is not running.")
        return base.EndpointTarget(str(address), port, path)

    def _running_pod(self, key: base.WorkspaceKey) -> tuple[str, str]:
        namespace = self._renderer.namespace(key)
        pod = self._ready_pod(namespace)
        if pod is None:
            raise TemporaryError(f"workspace {namespace} has no running pod")
        return namespace, pod["metadata"]["name"]

    def _ready_pod(self, namespace: str) -> dict[str, Any] | None:
        pods = diagnose.live(self._list_pods(namespace))
        return next((p for p in pods if diagnose.is_ready(p)), None)

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


def _post_start_pending(deployment: dict[str, Any], pod: dict[str, Any]) -> bool:
    """The devfile has postStart commands that have not run in ``pod`` yet."""
    ran_in = _annotation(deployment, manifests.POST_START_POD)
    return bool(manifests.post_start_of(deployment)) and ran_in != _uid(pod)


def _uid(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid") or pod["metadata"]["name"])


def _is_commit_id(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def _terminating(namespace: dict[str, Any]) -> bool:
    return (namespace.get("status") or {}).get("phase") == "Terminating"
