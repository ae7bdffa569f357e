"""A Kubernetes API double that speaks the wire formats, for the runtime tests.

It serves, on 127.0.0.1 only and behind a random bearer token, enough of the
REST API for :mod:`bot.runtime.kubernetes`: namespaces, deployments (apps/v1),
pods, PVCs, secrets, configmaps, networkpolicies (networking.k8s.io/v1),
resourcequotas, limitranges and events; equality label selectors; ``limit`` and
``continue``; JSON merge patches; 403/404/409 answers as ``kind: Status``
objects; and namespace deletion that takes the namespace's objects with it.

A Deployment with replicas > 0 gets one pod whose status follows
:class:`PodBehaviour` (ready at once, ready when the test says so, or one of the
failures a cluster shows). ``pods/exec`` is a real ``v4.channel.k8s.io``
WebSocket (channel 0 feeds stdin when ``stdin=true`` and is dropped otherwise,
1 and 2 carry stdout and stderr, 4 resizes the PTY of ``tty=true``), and the
stream ends with a v1 Status on channel 3, as the kubelet does. As in v4, stdin
is never closed: a command reads as much as it was told to.

Where the command runs: given ``container`` (a running Podman container made
from the workspace image, see the runtime tests), every pod's workspace
container is that container: exec is ``podman exec -i [-t]``, on a PTY of ours
for a TTY (so a resize reaches the container's terminal as in a real terminal),
and the kubelet's part is played too: a new pod's postStart hook runs there
before the pod counts as ready. Without one, the command runs as a local
subprocess in a scratch directory, for tests that need only the API traffic
(the RBAC test runs ``true`` and ``sh``).

A deleted namespace stays in phase Terminating, its content gone and new
content refused, for :attr:`KubeDouble.terminating_gets` reads of it, as a
namespace waits for its finalizers on a real cluster.

Every request is recorded with the RBAC words the API server would authorize
it with, for the test that compares them with the chart's ClusterRole.

The runtime also reads the commit it runs (the devfile) and bundles new commits
for ``sync`` with git on the bot's side; :func:`mr_source` gives it a merge
request served over smart HTTP by the GitLab double, with the bot's token, and
:func:`clone_tokens` the client that mints the workspaces' deploy tokens there.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import enum
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import struct
import subprocess
import tempfile
import termios
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from werkzeug.serving import make_server

from tests.services import podman_env

Obj = dict[str, Any]

#: (group, resource) -> (kind, namespaced)
RESOURCES = {
    ("", "namespaces"): ("Namespace", False),
    ("", "pods"): ("Pod", True),
    ("", "persistentvolumeclaims"): ("PersistentVolumeClaim", True),
    ("", "secrets"): ("Secret", True),
    ("", "configmaps"): ("ConfigMap", True),
    ("", "resourcequotas"): ("ResourceQuota", True),
    ("", "limitranges"): ("LimitRange", True),
    ("", "events"): ("Event", True),
    ("apps", "deployments"): ("Deployment", True),
    ("networking.k8s.io", "networkpolicies"): ("NetworkPolicy", True),
}
_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


class PodBehaviour(enum.Enum):
    READY = "ready"
    MANUAL = "manual"  # Pending until :meth:`KubeDouble.make_ready`
    IMAGE_PULL = "image-pull"
    UNSCHEDULABLE = "unschedulable"
    CRASH_LOOP = "crash-loop"
    CLONE_FAILED = "clone-failed"
    NEVER_READY = "never-ready"
    POST_START_FAILED = "post-start-failed"  # `rwctl init` failed


@dataclass(frozen=True)
class Call:
    """One request, in the words RBAC uses."""

    verb: str
    group: str
    resource: str  # with the subresource: "pods/exec"
    namespace: str
    name: str
    path: str


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386; close enough to a strategic merge for maps and scalars."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _selected(obj: Obj, selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in selector.split(","):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term and term not in labels:
            return False
    return True


class _Refusal(Exception):
    def __init__(self, body: Obj) -> None:
        super().__init__(body["message"])
        self.body = body


class KubeDouble:
    """The API server. Use :meth:`running` to serve it on a free loopback port."""

    def __init__(self, container: str | None = None) -> None:
        self.token = secrets.token_hex(16)
        self.behaviour = PodBehaviour.READY
        self.container = container
        #: Reads of a deleted namespace that still find it Terminating.
        self.terminating_gets = 0
        self._terminating: dict[str, int] = {}
        self.calls: list[Call] = []
        self._objects: dict[tuple[str, str, str, str], Obj] = {}
        self._lock = threading.RLock()
        self._denied: set[tuple[str, str, str]] = set()
        self._failures: dict[tuple[str, str, str], int] = {}
        self._version = 0
        self._workdir = tempfile.mkdtemp(prefix="kube-double-")
        self.url = ""
        self.app = self._build_app()

    # -- test controls ---------------------------------------------------------

    def deny(self, verb: str, group: str, resource: str) -> None:
        """Answer 403 to ``verb`` on ``group/resource`` from now on."""
        self._denied.add((verb, group, resource))

    def fail_once(self, verb: str, group: str, resource: str, code: int = 500) -> None:
        self._failures[(verb, group, resource)] = code

    def get(self, group: str, resource: str, namespace: str, name: str) -> Obj | None:
        with self._lock:
            found = self._objects.get((group, resource, namespace, name))
            return copy.deepcopy(found)

    def must(self, group: str, resource: str, namespace: str, name: str) -> Obj:
        found = self.get(group, resource, namespace, name)
        assert found is not None, f"{resource} {namespace}/{name} does not exist"
        return found

    def items(self, group: str, resource: str, namespace: str = "") -> list[Obj]:
        with self._lock:
            return [
                copy.deepcopy(o)
                for (g, r, ns, _), o in self._objects.items()
                if g == group and r == resource and (not namespace or ns == namespace)
            ]

    def seed(self, group: str, resource: str, obj: Obj) -> None:
        """Put an object in place as if someone had created it earlier."""
        with self._lock:
            self._store(
                group,
                resource,
                obj.get("metadata", {}).get("namespace", ""),
                copy.deepcopy(obj),
            )

    def make_ready(self, namespace: str) -> None:
        with self._lock:
            for pod in self.items("", "pods", namespace):
                failed = self._post_start_hook(pod)
                behaviour = PodBehaviour.READY
                if failed is not None:
                    behaviour = PodBehaviour.POST_START_FAILED
                pod["status"] = self._pod_status(behaviour, pod)
                self._store("", "pods", namespace, pod)
                self._events(behaviour, pod, failed)
            self._update_deployment_status(namespace)

    def rbac(self) -> set[tuple[str, str, str]]:
        """(apiGroup, resource, verb) of every request seen."""
        return {(c.group, c.resource, c.verb) for c in self.calls}

    # -- serving ---------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[KubeDouble]:
        server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{server.server_port}"
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            thread.join(timeout=10)
            shutil.rmtree(self._workdir, ignore_errors=True)

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        app.config["SOCK_SERVER_OPTIONS"] = {
            "subprotocols": ["v4.channel.k8s.io", "channel.k8s.io"]
        }
        sock = Sock(app)

        @app.before_request
        def check() -> Response | None:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                return self._answer(status(401, "Unauthorized", "Unauthorized"))
            return None

        @app.get("/version")
        def version() -> Response:
            return self._answer(
                {"major": "1", "minor": "37", "gitVersion": "v1.37.0"}, 200
            )

        @app.route(
            "/api/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
        )
        def core(rest: str) -> Response:
            return self._rest("", rest)

        @app.route(
            "/apis/<group>/<version>/<path:rest>",
            methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        )
        def grouped(group: str, version: str, rest: str) -> Response:
            return self._rest(group, f"{version}/{rest}")

        @app.before_request
        def exec_refusals() -> Response | None:
            # Refusals must come before the WebSocket upgrade, as a real server's do.
            parts = request.path.strip("/").split("/")
            if parts[-1:] != ["exec"] or len(parts) != 7:
                return None
            namespace, pod = parts[3], parts[5]
            try:
                self._authorize("get", "", "pods/exec", namespace, pod)
                self._authorize("create", "", "pods/exec", namespace, pod)
                if self.get("", "pods", namespace, pod) is None:
                    raise _Refusal(status(404, "NotFound", f'pods "{pod}" not found'))
            except _Refusal as refusal:
                return self._answer(refusal.body)
            return None

        @sock.route("/api/v1/namespaces/<namespace>/pods/<pod>/exec")  # type: ignore[untyped-decorator]
        def exec_(ws: Any, namespace: str, pod: str) -> None:
            _Exec(ws, request.args, self._workdir, self.container).run()

        return app

    def _answer(self, body: Obj, code: int | None = None) -> Response:
        return Response(
            json.dumps(body),
            status=code or body.get("code", 200),
            mimetype="application/json",
        )

    def _authorize(
        self, verb: str, group: str, resource: str, namespace: str, name: str
    ) -> None:
        with self._lock:
            self.calls.append(
                Call(verb, group, resource, namespace, name, request.path)
            )
        if (verb, group, resource) in self._denied:
            where = (
                f' in the namespace "{namespace}"'
                if namespace
                else " at the cluster scope"
            )
            raise _Refusal(
                status(
                    403,
                    "Forbidden",
                    f"{resource} is forbidden: User "
                    f'"system:serviceaccount:rwbot:rwbot" cannot {verb} resource '
                    f'"{resource}" in API group "{group}"{where}',
                )
            )
        code = self._failures.pop((verb, group, resource), None)
        if code is not None:
            raise _Refusal(status(code, "InternalError", "injected failure"))

    # -- REST ------------------------------------------------------------------

    def _rest(self, group: str, rest: str) -> Response:
        parts = rest.strip("/").split("/")[1:]  # drop the version
        namespace = ""
        if parts[:1] == ["namespaces"] and len(parts) >= 3:
            namespace, parts = parts[1], parts[2:]
        resource = parts[0] if parts else ""
        name = parts[1] if len(parts) > 1 else ""
        if (group, resource) not in RESOURCES or len(parts) > 2:
            return self._answer(
                status(
                    404, "NotFound", "the server could not find the requested resource"
                )
            )

        method = request.method
        if method == "GET":
            verb = "get" if name else ("watch" if request.args.get("watch") else "list")
        elif method == "DELETE":
            verb = "delete" if name else "deletecollection"
        else:
            verb = _METHOD_VERBS[method]
        try:
            self._authorize(verb, group, resource, namespace, name)
            with self._lock:
                return self._answer(
                    self._handle(verb, group, resource, namespace, name), 200
                )
        except _Refusal as refusal:
            return self._answer(refusal.body)

    def _handle(
        self, verb: str, group: str, resource: str, namespace: str, name: str
    ) -> Obj:
        kind, _ = RESOURCES[(group, resource)]
        if namespace and ("", "namespaces", "", namespace) not in self._objects:
            raise _Refusal(
                status(404, "NotFound", f'namespaces "{namespace}" not found')
            )
        if verb == "create" and namespace in self._terminating:
            raise _Refusal(
                status(
                    403,
                    "Forbidden",
                    f"{resource} is forbidden: unable to create new content in "
                    f"namespace {namespace} because it is being terminated",
                    {"causes": [{"reason": "NamespaceTerminating"}]},
                )
            )
        if resource == "namespaces" and verb == "get" and name in self._terminating:
            self._count_terminating_read(name)
        key = (group, resource, namespace, name)
        qualified = f"{resource}.{group}" if group else resource

        if verb == "list":
            return self._list(group, resource, namespace, kind)
        if verb == "create":
            body = request.get_json(force=True)
            name = body["metadata"]["name"]
            if (group, resource, namespace, name) in self._objects:
                raise _Refusal(
                    status(
                        409,
                        "AlreadyExists",
                        f'{qualified} "{name}" already exists',
                        {"name": name, "group": group, "kind": resource},
                    )
                )
            return self._store(group, resource, namespace, self._new(body, namespace))
        if key not in self._objects:
            raise _Refusal(
                status(
                    404,
                    "NotFound",
                    f'{qualified} "{name}" not found',
                    {"name": name, "group": group, "kind": resource},
                )
            )
        current = self._objects[key]
        if verb == "get":
            return copy.deepcopy(current)
        if verb == "update":
            body = self._new(request.get_json(force=True), namespace)
            body["metadata"]["uid"] = current["metadata"]["uid"]
            body["metadata"]["creationTimestamp"] = current["metadata"][
                "creationTimestamp"
            ]
            return self._store(group, resource, namespace, body)
        if verb == "patch":
            if "json-patch" in (request.content_type or ""):
                raise _Refusal(status(415, "UnsupportedMediaType", "json patch"))
            patched = merge_patch(current, request.get_json(force=True))
            return self._store(group, resource, namespace, patched)
        if verb == "delete":
            return self._delete(group, resource, namespace, name)
        raise _Refusal(status(405, "MethodNotAllowed", verb))

    def _list(self, group: str, resource: str, namespace: str, kind: str) -> Obj:
        selector = request.args.get("labelSelector")
        found = sorted(
            (
                o
                for o in self.items(group, resource, namespace)
                if _selected(o, selector)
            ),
            key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]),
        )
        start = int(request.args.get("continue") or 0)
        limit = int(request.args.get("limit") or 0) or len(found)
        page = found[start : start + limit]
        more = start + limit < len(found)
        return {
            "kind": f"{kind}List",
            "apiVersion": "v1",
            "metadata": {
                "resourceVersion": str(self._version),
                **({"continue": str(start + limit)} if more else {}),
            },
            "items": page,
        }

    def _new(self, body: Obj, namespace: str) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        if namespace:
            meta["namespace"] = namespace
        if obj.get("kind") == "Secret" and "stringData" in obj:
            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(v.encode()).decode()
        if obj.get("kind") == "Namespace":
            obj["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        return obj

    def _store(self, group: str, resource: str, namespace: str, obj: Obj) -> Obj:
        self._version += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._version)
        if resource == "deployments":
            meta["generation"] = int(meta.get("generation", 0)) + 1
        self._objects[(group, resource, namespace, meta["name"])] = obj
        if resource == "deployments":
            self._reconcile(namespace, obj)
        return copy.deepcopy(obj)

    def _delete(self, group: str, resource: str, namespace: str, name: str) -> Obj:
        key = (group, resource, namespace, name)
        if resource != "namespaces":
            return self._objects.pop(key)

        obj = self._objects[key]
        for inner in [k for k in self._objects if k[2] == name]:
            del self._objects[inner]
        obj["status"] = {"phase": "Terminating"}
        obj["metadata"].setdefault("deletionTimestamp", _now())
        obj["spec"] = {"finalizers": ["kubernetes"]}
        if name not in self._terminating:
            self._terminating[name] = self.terminating_gets
        if not self._terminating[name]:
            self._finish_terminating(name)
        return copy.deepcopy(obj)

    def _count_terminating_read(self, name: str) -> None:
        """One more read of a Terminating namespace: the last one finds it gone."""
        if self._terminating[name]:
            self._terminating[name] -= 1
            return
        self._finish_terminating(name)

    def _finish_terminating(self, name: str) -> None:
        self._terminating.pop(name, None)
        self._objects.pop(("", "namespaces", "", name), None)

    # -- pods ------------------------------------------------------------------

    def _reconcile(self, namespace: str, deployment: Obj) -> None:
        replicas = deployment["spec"].get("replicas", 1)
        pods = self.items("", "pods", namespace)
        if replicas == 0:
            for pod in pods:
                del self._objects[("", "pods", namespace, pod["metadata"]["name"])]
        elif not pods:
            template = deployment["spec"]["template"]
            name = f"workspace-{secrets.token_hex(4)}-{secrets.token_hex(2)}"
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    **copy.deepcopy(template["metadata"]),
                    "name": name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": _now(),
                    "resourceVersion": "1",
                },
                "spec": copy.deepcopy(template["spec"]),
            }
            behaviour = self.behaviour
            failed = (
                self._post_start_hook(pod) if behaviour is PodBehaviour.READY else None
            )
            if failed is not None:
                behaviour = PodBehaviour.POST_START_FAILED
            pod["status"] = self._pod_status(behaviour, pod)
            self._objects[("", "pods", namespace, name)] = pod
            self._events(behaviour, pod, failed)
        self._update_deployment_status(namespace)

    def _update_deployment_status(self, namespace: str) -> None:
        deployment = self._objects.get(("apps", "deployments", namespace, "workspace"))
        if deployment is None:
            return
        pods = self.items("", "pods", namespace)
        ready = sum(
            1
            for p in pods
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", [])
            )
        )
        deployment["status"] = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
        }

    def _pod_status(self, behaviour: PodBehaviour, pod: Obj) -> Obj:
        image = pod["spec"]["containers"][0]["image"]
        done = {"terminated": {"exitCode": 0, "reason": "Completed"}}
        ok = {"type": "PodScheduled", "status": "True"}

        def cond(kind: str, value: bool, reason: str = "") -> Obj:
            return {
                "type": kind,
                "status": str(value),
                **({"reason": reason} if reason else {}),
            }

        def init(state: Obj, last: Obj | None = None) -> list[Obj]:
            return [
                {
                    "name": "clone",
                    "image": image,
                    "ready": False,
                    "restartCount": 0,
                    "state": state,
                    **({"lastState": last} if last else {}),
                }
            ]

        def main(state: Obj, ready: bool = False, last: Obj | None = None) -> list[Obj]:
            return [
                {
                    "name": "workspace",
                    "image": image,
                    "ready": ready,
                    "restartCount": 6 if last else 0,
                    "state": state,
                    **({"lastState": last} if last else {}),
                }
            ]

        waiting = {"waiting": {"reason": "PodInitializing"}}
        if behaviour is PodBehaviour.READY:
            return {
                "phase": "Running",
                "podIP": _pod_ip(pod),
                "conditions": [
                    ok,
                    cond("Initialized", True),
                    cond("Ready", True),
                    cond("ContainersReady", True),
                ],
                "initContainerStatuses": init(done),
                "containerStatuses": main({"running": {"startedAt": _now()}}, True),
            }
        if behaviour is PodBehaviour.MANUAL:
            return {
                "phase": "Pending",
                "conditions": [ok, cond("Initialized", False), cond("Ready", False)],
                "initContainerStatuses": init({"running": {"startedAt": _now()}}),
                "containerStatuses": main(waiting),
            }
        if behaviour is PodBehaviour.IMAGE_PULL:
            pull = {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{image}"',
                }
            }
            return {
                "phase": "Pending",
                "conditions": [ok, cond("Initialized", False), cond("Ready", False)],
                "initContainerStatuses": init(pull),
                "containerStatuses": main(waiting),
            }
        if behaviour is PodBehaviour.UNSCHEDULABLE:
            return {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient memory.",
                    }
                ],
            }
        if behaviour in (PodBehaviour.CRASH_LOOP, PodBehaviour.POST_START_FAILED):
            crash = {
                "terminated": {
                    "exitCode": 127,
                    "reason": "Error",
                    "message": "sleep: not found",
                }
            }
            back_off = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": "back-off 5m0s restarting failed container",
                }
            }
            return {
                "phase": "Running",
                "conditions": [ok, cond("Initialized", True), cond("Ready", False)],
                "initContainerStatuses": init(done),
                "containerStatuses": main(back_off, last=crash),
            }
        if behaviour is PodBehaviour.CLONE_FAILED:
            failed = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "Error",
                    "message": "fatal: couldn't find remote ref refs/heads/gone\n",
                }
            }
            back_off = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": "back-off 10s restarting failed container",
                }
            }
            return {
                "phase": "Pending",
                "conditions": [ok, cond("Initialized", False), cond("Ready", False)],
                "initContainerStatuses": init(back_off, last=failed),
                "containerStatuses": main(waiting),
            }
        # NEVER_READY: running, but the readiness probe keeps failing.
        return {
            "phase": "Running",
            "conditions": [
                ok,
                cond("Initialized", True),
                cond("Ready", False, "ContainersNotReady"),
            ],
            "initContainerStatuses": init(done),
            "containerStatuses": main({"running": {"startedAt": _now()}}),
        }

    def _post_start_hook(self, pod: Obj) -> str | None:
        """Run the workspace container's postStart exec hook in the container,
        as the kubelet does before the pod may become ready; the event's
        message when it fails."""
        if self.container is None:
            return None
        (main,) = pod["spec"]["containers"]
        hook = (main.get("lifecycle") or {}).get("postStart", {}).get("exec")
        if not hook:
            return None
        done = subprocess.run(
            ["podman", "exec", self.container, *hook["command"]],
            env=podman_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            return None
        output = (done.stdout + done.stderr).strip()
        return f"PostStartHook failed: command exited with {done.returncode}: {output}"

    def _events(
        self, behaviour: PodBehaviour, pod: Obj, post_start: str | None = None
    ) -> None:
        image = pod["spec"]["containers"][0]["image"]
        name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
        messages = {
            PodBehaviour.IMAGE_PULL: [
                (
                    "Failed",
                    f'Failed to pull image "{image}": rpc error: code = NotFound '
                    f'desc = failed to resolve reference "{image}": not found',
                ),
                ("Failed", "Error: ErrImagePull"),
            ],
            PodBehaviour.UNSCHEDULABLE: [
                ("FailedScheduling", "0/3 nodes are available: 3 Insufficient memory."),
            ],
            PodBehaviour.NEVER_READY: [
                ("Unhealthy", "Readiness probe failed: checkout missing"),
            ],
            PodBehaviour.POST_START_FAILED: [
                (
                    "FailedPostStartHook",
                    post_start
                    or "PostStartHook failed: command exited with 3: rwctl: "
                    "group-taken: rwbot-write exists with gid 1000",
                ),
            ],
        }.get(behaviour, [])
        for n, (reason, message) in enumerate(messages):
            self._objects[("", "events", namespace, f"{name}.{n}")] = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{name}.{n}", "namespace": namespace},
                "involvedObject": {"kind": "Pod", "name": name, "namespace": namespace},
                "type": "Warning",
                "reason": reason,
                "message": message,
                "lastTimestamp": f"2030-01-01T00:00:{n:02d}Z",
                "count": 1,
            }


def mr_source(
    gitlab: Any,
    path: str = "group/app",
    files: dict[str, str | None] | None = None,
) -> tuple[Any, Obj]:
    """A project at ``path`` on the GitLab double with an MR adding ``files``;
    the workspace ``Source`` of its head, and the MR."""
    from bot.runtime import base

    project = gitlab.add_project(path, files={"README.md": "hello\n"})
    author = gitlab.add_user(f"author-{secrets.token_hex(3)}")
    mr = gitlab.open_mr(
        project, "feature/x", files or {"app.py": "print(1)\n"}, author=author
    )
    source = base.Source(
        url=gitlab.git_url(project),
        ref=f"refs/merge-requests/{mr['iid']}/head",
        sha=mr["sha"],
        path=path,
        token=gitlab.token,
    )
    return source, mr


def clone_tokens(gitlab: Any) -> Any:
    """The bot's real GitLab client on the GitLab double, which the runtime
    mints and revokes the workspaces' clone tokens (deploy tokens) with."""
    from bot.gitlab import Client
    from tests import harness

    return Client(harness.bot_settings(gitlab, "http://127.0.0.1:9", "sqlite://"))


def api_client(double: KubeDouble) -> Any:
    """A real ``kubernetes`` client pointed at ``double``."""
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = double.url
    configuration.api_key = {"authorization": double.token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(configuration)


class _Exec:
    """One exec session: the command in the pod's container (``podman exec``),
    or a local subprocess without one, bridged to channels."""

    def __init__(self, ws: Any, args: Any, cwd: str, container: str | None) -> None:
        self.ws = ws
        self.argv = args.getlist("command")
        self.tty = (args.get("tty") or "").lower() in ("true", "1")
        self.stdin = (args.get("stdin") or "").lower() in ("true", "1")
        self.cwd = cwd
        self.container = container
        #: Podman's own words when the command could not be started.
        self._refused = b""
        self._send_lock = threading.Lock()
        self._master: int | None = None
        self._pgid: int | None = None
        #: A resize arrived before the command wrote anything: podman may not
        #: have been listening for SIGWINCH yet, so it is signalled again then.
        self._early_resize = False
        self._wrote = False

    def send(self, channel: int, data: bytes) -> None:
        with self._send_lock:
            self.ws.send(bytes([channel]) + data)

    def run(self) -> None:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
        }
        argv = self.argv
        if self.container is not None:
            # -i always: with stdin=false nothing is ever written to it.
            tty = ["-t"] if self.tty else []
            argv = ["podman", "exec", "-i", *tty, self.container, *self.argv]
            env = podman_env()
        try:
            if self.tty:
                proc, pumps = self._start_tty(argv, {**env, "TERM": "xterm"})
            else:
                proc, pumps = self._start_pipes(argv, env)
        except OSError as err:
            message = (
                f"exec failed: unable to start container process: exec: "
                f'"{self.argv[0] if self.argv else ""}": {err.strerror}'
            )
            self.send(
                3,
                json.dumps(
                    {**status(500, "InternalError", message), "code": None}
                ).encode(),
            )
            return

        closed = False
        while proc.poll() is None:
            try:
                message = self.ws.receive(timeout=0.05)
            except ConnectionClosed:
                closed = True
                break
            if message is not None:
                self._input(proc, message)
        if closed:  # the client went away: end the session, as a hang-up would
            os.killpg(proc.pid, signal.SIGHUP)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pump in pumps:
            pump.join(timeout=5)
        if self._master is not None:
            os.close(self._master)
        if closed:
            return

        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        if self._refused:
            # The runtime could not start the command: the kubelet answers
            # with a Status without an exit code, in the runtime's words.
            message = self._refused.decode(errors="replace").strip()
            message = message.removeprefix("Error: ")
            self.send(
                3,
                json.dumps(
                    {**status(500, "InternalError", message), "code": None}
                ).encode(),
            )
            return
        if code == 0:
            result = {"metadata": {}, "status": "Success"}
        else:
            result = {
                "metadata": {},
                "status": "Failure",
                "message": "command terminated with non-zero exit code: "
                f"exit status {code}",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }
        self.send(3, json.dumps(result).encode())

    def _input(self, proc: subprocess.Popen[bytes], message: bytes | str) -> None:
        data = message.encode() if isinstance(message, str) else message
        channel, payload = data[0], data[1:]
        if channel == 0 and payload:
            if self._master is not None:
                os.write(self._master, payload)
            elif proc.stdin is not None and not proc.stdin.closed:
                try:
                    proc.stdin.write(payload)
                    proc.stdin.flush()
                except BrokenPipeError:  # the command stopped reading
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
        elif channel == 4 and self._master is not None:
            size = json.loads(payload)
            fcntl.ioctl(
                self._master,
                termios.TIOCSWINSZ,
                struct.pack("HHHH", size["Height"], size["Width"], 0, 0),
            )
            self._early_resize = not self._wrote
            os.killpg(proc.pid, signal.SIGWINCH)

    def _start_tty(
        self, argv: list[str], env: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], list[threading.Thread]]:
        master, slave = os.openpty()

        def controlling_tty() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            proc = subprocess.Popen(
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=self.cwd,
                env=env,
                preexec_fn=controlling_tty,
            )
        except OSError:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._master = master
        self._pgid = proc.pid
        pump = threading.Thread(target=self._pump_fd, args=(master, 1), daemon=True)
        pump.start()
        return proc, [pump]

    def _start_pipes(
        self, argv: list[str], env: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], list[threading.Thread]]:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.cwd,
            env=env,
            start_new_session=True,
        )
        assert proc.stdin and proc.stdout and proc.stderr
        if not self.stdin:
            proc.stdin.close()
        pumps = [
            threading.Thread(
                target=self._pump_fd, args=(proc.stdout.fileno(), 1), daemon=True
            ),
            threading.Thread(
                target=self._pump_fd, args=(proc.stderr.fileno(), 2), daemon=True
            ),
        ]
        for pump in pumps:
            pump.start()
        return proc, pumps

    def _pump_fd(self, fd: int, channel: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the PTY's other side is closed
                return
            if not data:
                return
            if channel == 2 and self.container is not None and _not_started(data):
                self._refused += data
                continue
            if not self._wrote and self._pgid is not None:
                self._wrote = True
                if self._early_resize:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self._pgid, signal.SIGWINCH)
            try:
                self.send(channel, data)
            except ConnectionClosed:
                return


def _not_started(data: bytes) -> bool:
    """Podman's error for a command the OCI runtime could not start (exit 126
    or 127), as opposed to the command's own output."""
    return data.startswith(b"Error: ") and b"OCI runtime" in data


def _pod_ip(pod: Obj) -> str:
    """A stable made-up address per pod, as the cluster network would give."""
    digest = hashlib.sha256(pod["metadata"]["name"].encode()).digest()
    return f"10.244.{digest[0]}.{digest[1] or 1}"
