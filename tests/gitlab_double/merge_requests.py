"""What happens to a merge request on GitLab's side: open, push, merge, close.

Each function changes the record and the repositories the way GitLab would,
and leaves on the record what the next Merge Request Hook reports: ``oldrev``
after a push, ``changes`` after any update. Callers hold ``store.lock``.
"""

from __future__ import annotations

from typing import Any

from tests.gitlab_double.state import (
    STATE_IDS,
    MergeRequest,
    Project,
    Store,
    User,
    hook_utc,
)


def open_mr(
    store: Store,
    target: Project,
    source: Project,
    author: User,
    branch: str,
    files: dict[str, str | None],
    *,
    title: str,
    description: str,
    draft: bool,
) -> MergeRequest:
    """Commit ``files`` on a new ``branch`` of ``source`` and open an MR."""
    source_repo = store.repos.path(source.path_with_namespace)
    base = store.repos.resolve(source_repo, f"refs/heads/{source.default_branch}")
    sha = store.repos.commit(source_repo, branch, files, title, parent=base)

    iid = target.next_iid
    target.next_iid += 1
    now = store.now()
    mr = MergeRequest(
        id=store.next_id(),
        iid=iid,
        project_id=target.id,
        source_project_id=source.id,
        title=f"Draft: {title}" if draft else title,
        description=description,
        author_id=author.id,
        source_branch=branch,
        target_branch=target.default_branch,
        sha=sha,
        base_sha="",
        start_sha="",
        created_at=now,
        updated_at=now,
        draft=draft,
    )
    publish_head(store, mr)
    store.mrs[(target.id, iid)] = mr

    return mr


def publish_head(store: Store, mr: MergeRequest) -> None:
    """Point ``refs/merge-requests/<iid>/head`` of the target repo at the head.

    For a fork the commits are fetched over from the source repository, so the
    ref is always fetchable from the target, as on GitLab.
    """
    repos = store.repos
    target = store.projects[mr.project_id]
    source = store.projects[mr.source_project_id]
    target_repo = repos.path(target.path_with_namespace)
    ref = f"refs/merge-requests/{mr.iid}/head"
    if source.id == target.id:
        repos.set_ref(target_repo, ref, mr.sha)
    else:
        source_repo = repos.path(source.path_with_namespace)
        repos.copy_ref(source_repo, f"refs/heads/{mr.source_branch}", target_repo, ref)

    start = repos.resolve(target_repo, f"refs/heads/{mr.target_branch}") or ""
    mr.start_sha = start
    mr.base_sha = repos.merge_base(target_repo, start, mr.sha)


def push(
    store: Store, mr: MergeRequest, files: dict[str, str | None], message: str
) -> str:
    source = store.projects[mr.source_project_id]
    repo = store.repos.path(source.path_with_namespace)
    sha = store.repos.commit(repo, mr.source_branch, files, message)
    moved_head(store, mr, sha, message)

    return sha


def moved_head(store: Store, mr: MergeRequest, sha: str, message: str) -> None:
    """Record a new head: ``oldrev`` for the hook and GitLab's system note."""
    previous = mr.sha
    mr.sha = sha
    publish_head(store, mr)
    mr.oldrev = previous
    mr.changes = touch(store, mr)

    title = message.splitlines()[0] if message else ""
    store.add_note(
        mr,
        mr.author_id,
        f"added 1 commit\n\n<ul><li>{sha[:8]} - {title}</li></ul>",
        system=True,
    )


def sync_pushed_branches(store: Store, project: Project) -> None:
    """After a git push over HTTP, move the heads of open MRs from that repo."""
    with store.lock:
        repo = store.repos.path(project.path_with_namespace)
        for mr in store.mrs.values():
            if mr.source_project_id != project.id or mr.state != "opened":
                continue
            sha = store.repos.resolve(repo, f"refs/heads/{mr.source_branch}")
            if sha and sha != mr.sha:
                moved_head(store, mr, sha, store.repos.show(repo, sha, "%s"))


def touch(store: Store, mr: MergeRequest) -> dict[str, dict[str, Any]]:
    """Bump ``updated_at``; return it as a hook ``changes`` entry."""
    before = mr.updated_at
    mr.updated_at = store.now()
    return {
        "updated_at": {
            "previous": hook_utc(before),
            "current": hook_utc(mr.updated_at),
        }
    }


def set_state(store: Store, mr: MergeRequest, state: str, actor: User) -> None:
    previous = mr.state
    mr.state = state
    mr.oldrev = None
    mr.changes = {
        "state_id": {"previous": STATE_IDS[previous], "current": STATE_IDS[state]},
        **touch(store, mr),
    }
    if state == "closed":
        mr.closed_at, mr.closed_by_id = mr.updated_at, actor.id
    if state == "merged":
        mr.merged_at, mr.merged_by_id = mr.updated_at, actor.id
    if state == "opened":
        mr.closed_at = mr.closed_by_id = None


def merge(store: Store, mr: MergeRequest, actor: User) -> None:
    """Merge with a merge commit (GitLab's default merge method)."""
    target = store.projects[mr.project_id]
    repo = store.repos.path(target.path_with_namespace)
    message = (
        f"Merge branch '{mr.source_branch}' into '{mr.target_branch}'\n\n"
        f"{mr.title}\n\nSee merge request {target.path_with_namespace}!{mr.iid}"
    )
    mr.merge_commit_sha = store.repos.merge(repo, mr.target_branch, mr.sha, message)
    set_state(store, mr, "merged", actor)


def set_draft(store: Store, mr: MergeRequest, draft: bool, actor: User) -> None:
    """Mark draft or ready; GitLab does it through the ``Draft:`` title prefix."""
    old_title, was_draft = mr.title, mr.draft
    bare = mr.title.removeprefix("Draft: ")
    mr.title = f"Draft: {bare}" if draft else bare
    mr.draft = draft
    mr.oldrev = None
    mr.changes = {
        "draft": {"previous": was_draft, "current": draft},
        "title": {"previous": old_title, "current": mr.title},
        **touch(store, mr),
    }

    word = "draft" if draft else "ready"
    store.add_note(
        mr, actor.id, f"marked this merge request as **{word}**", system=True
    )
