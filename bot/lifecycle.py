"""Decisions about a merge request's workspace, with no I/O.

Two questions are answered here, both as plain functions so they can be tested
exhaustively:

- :func:`observe`: GitLab told us something about an MR (a webhook or a resync);
  how does that change the stored desired state?
- :func:`plan`: given the stored state, what should the reconciler make the
  runtime do?
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from bot.runtime.base import Source
from bot.settings import Settings
from bot.store import Workspace, utcnow


class Desired(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    GONE = "gone"


class Phase(enum.StrEnum):
    """What the MR comment reports."""

    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"
    REMOVED = "removed"
    AWAITING_APPROVAL = "awaiting-approval"
    DRAFT = "draft"


@dataclass(frozen=True)
class MergeRequestFacts:
    """What GitLab says about a merge request, whichever way we heard it."""

    project_id: int
    mr_iid: int
    project_path: str
    project_http_url: str
    mr_url: str
    title: str
    state: str
    head_sha: str
    draft: bool
    is_fork: bool
    source_branch: str
    updated_at: dt.datetime | None
    author_id: int | None = None


def desired_for(state: str) -> Desired:
    """Merged and closed MRs lose their workspace; open (and locked, which is
    a transient state during a merge) ones keep it."""
    if state in ("closed", "merged"):
        return Desired.GONE
    return Desired.RUNNING


def new_workspace(facts: MergeRequestFacts) -> Workspace:
    ws = Workspace(
        project_id=facts.project_id,
        mr_iid=facts.mr_iid,
        generation=1,
        version=1,
        attempts=0,
        phase=Phase.PENDING,
        reason="",
    )
    _copy(ws, facts)
    ws.desired = desired_for(facts.state)
    ws.due_at = utcnow()
    return ws


def observe(ws: Workspace, facts: MergeRequestFacts) -> bool:
    """Fold ``facts`` into ``ws``; return False if they are older than what we have.

    GitLab may deliver events out of order (retries, several Sidekiq workers);
    ``updated_at`` keeps an old "open" from undoing a newer "merge". When an MR
    that had lost its workspace is reopened, the generation is bumped so that a
    fresh workspace replaces whatever is left of the old one.
    """
    if (
        facts.updated_at is not None
        and ws.mr_updated_at is not None
        and _naive(facts.updated_at) < ws.mr_updated_at
    ):
        return False
    if not _differs(ws, facts):
        return False

    desired = desired_for(facts.state)
    if ws.desired == Desired.GONE and desired == Desired.RUNNING:
        ws.generation += 1
        ws.running_sha = None
        ws.approved_sha = None
        ws.phase = Phase.PENDING
        ws.reason = ""
        ws.attempts = 0
    if desired == Desired.GONE or ws.desired == Desired.GONE:
        ws.desired = desired
    _copy(ws, facts)
    ws.version += 1
    ws.due_at = utcnow()
    return True


def _copy(ws: Workspace, facts: MergeRequestFacts) -> None:
    ws.project_path = facts.project_path
    ws.project_http_url = facts.project_http_url
    ws.mr_url = facts.mr_url
    ws.title = facts.title
    ws.mr_state = facts.state
    ws.head_sha = facts.head_sha
    ws.draft = facts.draft
    ws.is_fork = facts.is_fork
    ws.source_branch = facts.source_branch
    if facts.author_id is not None:
        ws.author_id = facts.author_id
    if facts.updated_at is not None:
        ws.mr_updated_at = _naive(facts.updated_at)


def _differs(ws: Workspace, facts: MergeRequestFacts) -> bool:
    return (
        ws.mr_state != facts.state
        or ws.head_sha != facts.head_sha
        or ws.draft != facts.draft
        or ws.is_fork != facts.is_fork
        or ws.title != facts.title
        or ws.project_path != facts.project_path
        or (
            ws.desired != desired_for(facts.state)
            and Desired.GONE in (ws.desired, desired_for(facts.state))
        )
    )


def _naive(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


class Action(enum.Enum):
    RUN = "run"
    STOP = "stop"
    REMOVE = "remove"
    HOLD = "hold"


@dataclass(frozen=True)
class Plan:
    action: Action
    #: For RUN: the commit a new workspace checks out.
    sha: str = ""
    #: For HOLD: why nothing is started.
    phase: Phase = Phase.PENDING


def plan(ws: Workspace, *, start_drafts: bool) -> Plan:
    """What the runtime should do for ``ws``."""
    if ws.desired == Desired.GONE:
        return Plan(Action.REMOVE)
    if ws.desired == Desired.STOPPED:
        return Plan(Action.STOP)
    if ws.is_fork:
        # Code from a fork runs only once a Developer approved a commit, and
        # only that commit: a later push to the fork needs a new approval.
        if not ws.approved_sha:
            return Plan(Action.HOLD, phase=Phase.AWAITING_APPROVAL)
        return Plan(Action.RUN, sha=ws.approved_sha)
    if ws.draft and not start_drafts and ws.running_sha is None and not ws.approved_sha:
        return Plan(Action.HOLD, phase=Phase.DRAFT)
    return Plan(Action.RUN, sha=ws.head_sha)


def checkout_source(settings: Settings, ws: Workspace, sha: str) -> Source:
    """Where a workspace's code comes from.

    The URL is built from the bot's own configuration, never from a payload, so
    the bot's token is only ever sent to the configured GitLab. The MR ref lives
    in the target project and also holds fork MRs' commits. The token is for
    the bot's own git (it fetches, reads the devfile, makes sync bundles) and
    never enters a workspace: where a workspace clones for itself (Kubernetes)
    the runtime mints a read-only deploy token for it instead.
    """
    return Source(
        url=f"{settings.gitlab_url}/{ws.project_path}.git",
        ref=f"refs/merge-requests/{ws.mr_iid}/head",
        sha=sha,
        path=ws.project_path,
        token=settings.gitlab_token,
    )
