"""Reading a workspace's pod status as a person would; no I/O.

A workspace is failed when its pod says something that waiting will not mend
(the image cannot be pulled, the clone failed, the shell image crashes) or when
it has not become ready within the configured time; the reason comes from the
pod's own words, preferring the event that carries the full message.

See https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/ for the
states and https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#PodStatus
for the fields read here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.runtime.kube.manifests import CONTAINER

Obj = dict[str, Any]

CLONE = "clone"
_PULL = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
_BROKEN = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


@dataclass(frozen=True)
class Problem:
    """Something wrong with a pod; ``fatal`` ones fail the workspace at once."""

    pod: str
    what: str
    detail: str
    fatal: bool


def _statuses(pod: Obj, key: str) -> list[Obj]:
    return list((pod.get("status") or {}).get(key) or [])


def _state(status: Obj, which: str = "state") -> tuple[str, Obj]:
    for name, value in (status.get(which) or {}).items():
        if value is not None:
            return name, value
    return "", {}


def live(pods: Iterable[Obj]) -> list[Obj]:
    return [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]


def is_ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )


def clone_finished(pod: Obj) -> bool:
    """The init container ended well (or the pod is past it)."""
    for status in _statuses(pod, "initContainerStatuses"):
        if status.get("name") == CLONE:
            name, state = _state(status)
            return name == "terminated" and state.get("exitCode") == 0
    return is_ready(pod)


def _terminated_text(state: Obj) -> str:
    message = (state.get("message") or state.get("reason") or "").strip()
    code = state.get("exitCode")
    return f"{message} (exit code {code})" if message else f"exit code {code}"


def _container_problem(pod: str, status: Obj, init: bool) -> Problem | None:
    name, state = _state(status)
    container = status.get("name", "")
    clone = init and container == CLONE
    reason = state.get("reason") or ""

    if clone and name == "terminated" and state.get("exitCode") not in (0, None):
        return Problem(pod, "clone", _terminated_text(state), fatal=True)
    if name != "waiting":
        return None
    if reason in _PULL:
        image = status.get("image") or "the workspace image"
        return Problem(pod, "pull", f"{image}: {state.get('message') or reason}", True)
    if reason == "CrashLoopBackOff":
        _, last = _state(status, "lastState")
        what = "clone" if clone else "crash"
        return Problem(pod, what, _terminated_text(last) if last else reason, True)
    if reason in _BROKEN:
        return Problem(pod, "broken", f"{reason}: {state.get('message', '')}", True)
    return None


def problem(pods: Sequence[Obj]) -> Problem | None:
    """The first thing wrong with the pods, fatal problems first."""
    found: list[Problem] = []
    for pod in live(pods):
        name = (pod.get("metadata") or {}).get("name", "")
        for status in _statuses(pod, "initContainerStatuses"):
            if (p := _container_problem(name, status, init=True)) is not None:
                found.append(p)
        for status in _statuses(pod, "containerStatuses"):
            if status.get("name") == CONTAINER and (
                p := _container_problem(name, status, init=False)
            ):
                found.append(p)
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("reason") == "Unschedulable"
            ):
                message = condition.get("message") or "no node fits the workspace"
                found.append(Problem(name, "unschedulable", message, fatal=False))
    found.sort(key=lambda p: not p.fatal)
    return found[0] if found else None


def _latest_warning(events: Sequence[Obj], pod: str | None) -> Obj | None:
    warnings = [
        e
        for e in events
        if e.get("type") == "Warning"
        and (pod is None or (e.get("involvedObject") or {}).get("name") == pod)
    ]
    warnings.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return warnings[-1] if warnings else None


def reason(
    found: Problem | None, events: Sequence[Obj], *, timed_out: bool, timeout: float
) -> str:
    """A sentence saying why the workspace failed."""
    if found is not None and found.what == "pull":
        # The kubelet follows "Failed to pull image …: <why>" with a bare
        # "Error: ErrImagePull"; the first one is worth showing.
        telling = [
            e
            for e in events
            if e.get("reason") == "Failed"
            and not str(e.get("message", "")).startswith("Error: ")
        ]
        event = _latest_warning(telling, found.pod)
        detail = event["message"] if event else found.detail
        return f"the workspace image could not be pulled: {detail}"
    if found is not None and found.what == "clone":
        return f"cloning the merge request failed: {found.detail}"
    if found is not None and found.what == "crash":
        hook = _latest_warning(
            [e for e in events if e.get("reason") == "FailedPostStartHook"], found.pod
        )
        if hook is not None:  # `rwctl init` failed, and the kubelet killed the shell
            return f"preparing the workspace failed: {hook['message']}"
        return f"the workspace container keeps crashing: {found.detail}"
    if found is not None and found.what == "broken":
        return f"the workspace container cannot be created: {found.detail}"

    prefix = f"the workspace did not become ready within {timeout:g} s"
    if not timed_out:  # pragma: no cover - callers only ask for fatal or late
        prefix = "the workspace is not ready"
    if found is not None:
        return f"{prefix}: cannot be scheduled: {found.detail}"
    event = _latest_warning(events, None)
    return f"{prefix}: {event['message']}" if event else prefix
