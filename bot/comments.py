"""The bot's MR comment: what it says for each state, rendered from a template.

The body is a pure function of the stored workspace row, so the reconciler can
compare a digest of the rendered text with the one it last posted and skip
editing a comment that would not change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import jinja2

from bot import endpoints
from bot.lifecycle import Phase
from bot.runtime.base import WorkspaceKey
from bot.store import Workspace, utcnow

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    # Markdown, not HTML: untrusted values go through _inline() instead.
    autoescape=False,  # noqa: S701
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)

_HEADLINES = {
    Phase.PENDING: ("⏳", "starting", "The workspace is being prepared."),
    Phase.STARTING: ("⏳", "starting", "The workspace is being prepared."),
    Phase.READY: ("🟢", "ready", "The workspace is running the merge request's code."),
    Phase.FAILED: ("🔴", "failed", "The workspace could not be started."),
    Phase.STOPPED: ("⏸️", "stopped", "The workspace is stopped; its files are kept."),
    Phase.REMOVED: ("⚪", "removed", "The workspace and its data were removed."),
    Phase.AWAITING_APPROVAL: (
        "✋",
        "waiting for approval",
        "This merge request comes from a fork, so its code does not run "
        "automatically. A project member with at least the Developer role can "
        "start it by commenting `{prefix} start`; that runs the current commit only.",
    ),
    Phase.DRAFT: (
        "📝",
        "not started (draft)",
        "Workspaces do not start for draft merge requests here; comment "
        "`{prefix} start` to start one anyway.",
    ),
}


@dataclass(frozen=True)
class Member:
    username: str
    role: str


def marker(project_id: int, mr_iid: int) -> str:
    """An invisible line that identifies the bot's comment on an MR."""
    return f"<!-- review-workspace-bot:p{project_id}-mr{mr_iid} -->"


def join_url(public_url: str, project_id: int, mr_iid: int) -> str:
    return f"{public_url}/w/{project_id}/{mr_iid}"


def render(
    ws: Workspace,
    *,
    public_url: str,
    prefix: str = "/workspace",
    members: tuple[Member, ...] = (),
    reason: str | None = None,
    warn_before: float = 3600,
    now: dt.datetime | None = None,
    endpoints_domain: str = "",
) -> str:
    phase = Phase(ws.phase)
    links, notices = endpoint_links(ws, public_url, endpoints_domain)
    icon, headline, summary = _HEADLINES[phase]
    if phase == Phase.REMOVED and ws.mr_state in ("merged", "closed"):
        summary = (
            f"The merge request was {ws.mr_state}; "
            "the workspace and its data were removed."
        )
    project_url = ws.mr_url.split("/-/merge_requests/")[0] if ws.mr_url else ""
    behind = bool(
        ws.running_sha
        and ws.head_sha != ws.running_sha
        and phase in (Phase.READY, Phase.STOPPED)
    )
    now = now or utcnow()
    warn = dt.timedelta(seconds=warn_before)
    running = phase == Phase.READY
    return _env.get_template("comment.md.j2").render(
        stop_at=_when(ws.stop_at) if running else None,
        stop_soon=running and ws.stop_at is not None and ws.stop_at - now <= warn,
        expires_at=_when(ws.expires_at) if running else None,
        expire_soon=running
        and ws.expires_at is not None
        and ws.expires_at - now <= warn,
        icon=icon,
        headline=headline,
        summary=summary.format(prefix=prefix),
        phase=phase.value,
        sha=ws.head_sha,
        running_sha=ws.running_sha if phase in (Phase.READY, Phase.STOPPED) else None,
        head_sha=ws.head_sha,
        behind=behind,
        commit_url=lambda sha: f"{project_url}/-/commit/{sha}",
        joinable=phase == Phase.READY,
        join_url=join_url(public_url, ws.project_id, ws.mr_iid),
        members=[Member(_inline(m.username), m.role) for m in members],
        reason=_inline(reason if reason is not None else ws.reason),
        endpoints=links if phase == Phase.READY else [],
        notices=[_inline(line) for line in notices] if phase == Phase.READY else [],
        prefix=prefix,
        marker=marker(ws.project_id, ws.mr_iid),
    )


def endpoint_links(
    ws: Workspace, public_url: str, domain: str
) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, entry URL) of each exposed endpoint, and the other notes; without
    an endpoints domain, a note saying which setting would expose them."""
    names, notices = endpoints.split_notes((ws.notices or "").splitlines())
    key = WorkspaceKey(ws.project_id, ws.mr_iid)
    if domain:
        return [(n, public_url + endpoints.entry_path(key, n)) for n in names], notices
    if names:
        notices.append(
            f"devfile endpoints ({', '.join(names)}) are not exposed: the bot's "
            "administrator has not set RWBOT_ENDPOINTS_DOMAIN"
        )
    return [], notices


def _when(value: dt.datetime | None) -> str | None:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else None


def digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def _inline(text: str) -> str:
    """Keep untrusted text on one line and unable to open Markdown or HTML."""
    flat = " ".join(text.split())
    for char in "\\`*_[]<>|#!":
        flat = flat.replace(char, "\\" + char)
    return flat[:1000]
