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

The clone credential is a short-lived deploy token, never the bot's own token
(:mod:`bot.runtime.kube.credentials`). Exec goes through
:mod:`bot.runtime.kube.stream`, every other API call through
:mod:`bot.runtime.kube.cluster`.

A devfile in the commit is read by the bot before the Deployment is written
(:mod:`bot.runtime.kube.checkout`) and shapes its container; its postStart
commands run over exec once the pod is ready, in every new pod (each has a new
root filesystem), and the workspace counts as running only after they have.
``sync`` sends a git bundle through exec's stdin.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes import config as kube_config

from bot import accounts, git
from bot.errors import ConfigError, PermanentError, TemporaryError
from bot.runtime import base, workspace
from bot.runtime.kube import checkout, cluster, credentials, diagnose, manifests, stream
from bot.runtime.kube.config import KubernetesConfig, config_from_env
from bot.runtime.kube.credentials import CloneTokens

if TYPE_CHECKING:
    from bot.gitlab import CloneToken

__all__ = ["CloneTokens", "KubernetesConfig", "KubernetesRuntime", "config_from_env"]

log = logging.getLogger(__name__)

#: Oldest and newest Kubernetes minor the manifests and chart are checked against.
SUPPORTED_KUBERNETES = ("1.29", "1.37")

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
        clone_tokens: CloneTokens,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._clock = clock
        self._cluster = cluster.Cluster(api_client, instance)
        self._credentials = credentials.Credentials(
            clone_tokens, self._cluster, config.ready_timeout
        )
        self._exec = stream.Connector(api_client)
        self._renderer = manifests.Renderer(config, instance)

    @classmethod
    def from_cluster(
        cls, config: KubernetesConfig, instance: str, clone_tokens: CloneTokens
    ) -> KubernetesRuntime:
        """Use the pod's service account, or the kubeconfig outside a cluster."""
        try:
            kube_config.load_incluster_config()
        except kube_config.ConfigException:
            try:
                kube_config.load_kube_config()
            except (kube_config.ConfigException, OSError) as err:
                raise ConfigError(f"no Kubernetes configuration found: {err}") from err
        return cls(client.ApiClient(), config, instance, clone_tokens=clone_tokens)

    # -- lifecycle -----------------------------------------------------------

    def ensure_running(self, spec: base.Spec) -> base.Status:
        namespace = self._renderer.namespace(spec.key)
        current = self._cluster.read_namespace(namespace)
        if current is not None and _terminating(current):
            return base.Status(base.Phase.STARTING, generation=spec.generation)
        if current is not None and _generation(current) != spec.generation:
            log.info(
                "replacing workspace of an older generation",
                extra={"namespace": namespace, "generation": spec.generation},
            )
            self._delete_workspace(spec.key)
            return base.Status(base.Phase.STARTING, generation=spec.generation)

        manifests.check_source(spec.source)
        deployment = (
            None if current is None else self._cluster.read_deployment(namespace)
        )
        if deployment is not None:
            return self._resume(spec, namespace, deployment)

        # The devfile is read from the commit being run, and the clone token
        # minted, before anything is made: when either cannot be had, nothing
        # is left behind.
        shape = manifests.shape_for(
            spec, self._config, checkout.devfile_plan(spec.source, spec.devfile)
        )
        credential = self._credentials.mint(spec.source.path, namespace)
        try:
            return self._create_workspace(spec, namespace, current, shape, credential)
        except BaseException:
            self._credentials.revoke(spec.source.path, credential.id)
            raise

    def _create_workspace(
        self,
        spec: base.Spec,
        namespace: str,
        current: dict[str, Any] | None,
        shape: manifests.Shape,
        credential: CloneToken,
    ) -> base.Status:
        objects = self._render(spec, shape, credential)
        if current is None:
            made = self._cluster.create_namespace(objects["Namespace"])
            if made is None:  # created meanwhile, by another worker: ours?
                self._cluster.read_namespace(namespace)
        deployment = self._cluster.read_deployment(namespace)
        if deployment is not None:  # made meanwhile, with a token of its own
            self._credentials.revoke(spec.source.path, credential.id)
            return self._resume(spec, namespace, deployment)

        for kind in (
            "ConfigMap",
            "Secret",
            "PersistentVolumeClaim",
            "NetworkPolicy",
            "ResourceQuota",
            "LimitRange",
        ):
            self._cluster.apply(kind, objects[kind])
        created = self._cluster.create_deployment(objects["Deployment"], namespace)
        if created is not None:
            log.info("workspace created", extra={"namespace": namespace})
            return base.Status(
                base.Phase.STARTING, generation=spec.generation, notes=shape.notes
            )

        # Made meanwhile, but the Secret now holds our token: keep that one.
        deployment = self._cluster.read_deployment(namespace) or {}
        self._credentials.hand_over(spec.source.path, namespace, deployment, credential)
        return self._resume(spec, namespace, deployment)

    def _render(
        self, spec: base.Spec, shape: manifests.Shape, credential: CloneToken | None
    ) -> dict[str, dict[str, Any]]:
        """The workspace's objects; with ``credential``, the Secret holds it
        (never the bot's own token) and the Deployment remembers its id."""
        if credential is None:
            spec = dataclasses.replace(
                spec, source=dataclasses.replace(spec.source, token="")
            )
            return self._renderer.render(spec, started_at=self._clock(), shape=shape)

        source = dataclasses.replace(spec.source, token=credential.token)
        objects = self._renderer.render(
            dataclasses.replace(spec, source=source),
            started_at=self._clock(),
            shape=shape,
        )
        objects["Secret"].setdefault("stringData", {})["username"] = credential.username
        annotations = objects["Deployment"]["metadata"].setdefault("annotations", {})
        annotations[credentials.CLONE_TOKEN] = credentials.token_record(
            spec.source.path, credential
        )
        return objects

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
        cloned = cluster.annotation(deployment, manifests.CHECKOUT) == "done"
        credential: CloneToken | None = None
        if not cloned:  # the clone has not finished: hand a fresh token
            credential = self._credentials.mint(spec.source.path, namespace, deployment)
        objects = self._render(spec, shape, credential)
        try:
            self._start(spec.source.path, namespace, objects, deployment, credential)
        except BaseException:
            if credential is not None:
                self._credentials.revoke(spec.source.path, credential.id)
            raise
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
            argv = workspace.post_start_argv(step.command_line, step.directory)
            ws = self._exec.open(namespace, pod["metadata"]["name"], argv, tty=False)
            try:
                ran = stream.run(ws, self._config.exec_timeout)
            except TemporaryError as err:
                notes.append(f"postStart command {step.id} did not finish: {err}")
                continue
            note = workspace.post_start_note(step.id, ran.exit_code, ran.output)
            if note is not None:
                notes.append(note)
        notes.append(workspace.post_start_summary(len(steps)))
        self._cluster.patch_deployment(
            namespace,
            {"metadata": {"annotations": {manifests.POST_START_POD: _uid(pod)}}},
        )
        log.info(
            "post-start commands ran",
            extra={"namespace": namespace, "commands": len(steps)},
        )
        return tuple(notes)

    def _start(
        self,
        project: str,
        namespace: str,
        objects: dict[str, Any],
        deployment: dict[str, Any],
        credential: CloneToken | None,
    ) -> None:
        """Scale a stopped workspace up, refreshing what may have changed since;
        a ``credential`` replaces the clone token of an unfinished clone."""
        kinds = ["ConfigMap", "NetworkPolicy", "ResourceQuota", "LimitRange"]
        if credential is not None:
            kinds.append("Secret")
        for kind in kinds:
            self._cluster.apply(kind, objects[kind])
        annotations = {manifests.STARTED_AT: f"{self._clock():.3f}"}
        if credential is not None:
            annotations[credentials.CLONE_TOKEN] = credentials.token_record(
                project, credential
            )
        self._cluster.patch_deployment(
            namespace,
            {"metadata": {"annotations": annotations}, "spec": {"replicas": 1}},
        )
        if credential is not None:
            self._credentials.revoke_annotated(deployment)
        log.info("workspace started", extra={"namespace": namespace})

    def stop(self, key: base.WorkspaceKey) -> None:
        namespace = self._renderer.namespace(key)
        self._cluster.patch_deployment(
            namespace, {"spec": {"replicas": 0}}, missing_ok=True
        )

    def remove(self, key: base.WorkspaceKey) -> None:
        namespace = self._renderer.namespace(key)
        if self._cluster.read_namespace(namespace) is not None:
            self._delete_workspace(key)
            log.info("workspace removed", extra={"namespace": namespace})

    def _delete_workspace(self, key: base.WorkspaceKey) -> None:
        """Delete the namespace, revoking every clone token of the workspace:
        the one still handed out and any a killed worker left. They are in
        the key's project, the merge request's target, where they are minted
        (:func:`bot.lifecycle.checkout_source`)."""
        namespace = self._renderer.namespace(key)
        deployment = self._cluster.read_deployment(namespace)
        self._credentials.retire(key.project_id, namespace, deployment)
        self._cluster.delete_namespace(namespace)

    # -- status --------------------------------------------------------------

    def status(self, key: base.WorkspaceKey) -> base.Status:
        namespace = self._renderer.namespace(key)
        current = self._cluster.read_namespace(namespace)
        if current is None or _terminating(current):
            return base.Status(base.Phase.MISSING)
        generation = _generation(current)
        deployment = self._cluster.read_deployment(namespace)
        if deployment is None:
            return base.Status(base.Phase.MISSING, generation=generation)
        if not (deployment.get("spec") or {}).get("replicas"):
            return base.Status(base.Phase.STOPPED, generation=generation)

        pods = diagnose.live(self._cluster.list_pods(namespace))
        if cluster.annotation(deployment, manifests.CHECKOUT) != "done" and any(
            diagnose.clone_finished(p) for p in pods
        ):
            self._credentials.forget(namespace, deployment, cloned=True)
        ready = [p for p in pods if diagnose.is_ready(p)]
        if ready and _post_start_pending(deployment, ready[0]):
            # Ready, but not prepared: ensure_running runs the commands.
            return base.Status(base.Phase.STARTING, generation=generation)
        if ready:
            return base.Status(base.Phase.RUNNING, generation=generation)

        found = diagnose.problem(pods)
        started = float(
            cluster.annotation(deployment, manifests.STARTED_AT) or self._clock()
        )
        timed_out = self._clock() - started > self._config.ready_timeout
        if (found is None or not found.fatal) and not timed_out:
            return base.Status(base.Phase.STARTING, generation=generation)

        events = self._cluster.list_events(namespace)
        reason = diagnose.reason(
            found, events, timed_out=timed_out, timeout=self._config.ready_timeout
        )
        log.info("workspace failed", extra={"namespace": namespace, "reason": reason})
        if cluster.annotation(deployment, credentials.CLONE_TOKEN) is not None:
            self._credentials.forget(namespace, deployment, cloned=False)
        return base.Status(base.Phase.FAILED, reason=reason, generation=generation)

    def list_ours(self) -> Iterator[base.Listed]:
        for item in self._cluster.our_namespaces():
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
        self._cluster.ping()

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
        deployment = self._cluster.read_deployment(namespace)
        if deployment is None or not (deployment.get("spec") or {}).get("replicas"):
            raise PermanentError("The workspace is not running.")
        record = cluster.annotation(deployment, base.ENDPOINTS)
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
        pods = diagnose.live(self._cluster.list_pods(namespace))
        return next((p for p in pods if diagnose.is_ready(p)), None)


def _generation(obj: dict[str, Any]) -> int:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    try:
        return int(labels.get(base.LABEL_GENERATION, 0))
    except ValueError:
        return 0


def _post_start_pending(deployment: dict[str, Any], pod: dict[str, Any]) -> bool:
    """The devfile has postStart commands that have not run in ``pod`` yet."""
    ran_in = cluster.annotation(deployment, manifests.POST_START_POD)
    return bool(manifests.post_start_of(deployment)) and ran_in != _uid(pod)


def _uid(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid") or pod["metadata"]["name"])


def _is_commit_id(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def _terminating(namespace: dict[str, Any]) -> bool:
    return (namespace.get("status") or {}).get("phase") == "Terminating"
