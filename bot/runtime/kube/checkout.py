"""The bot's own look at the commit a workspace will run: its devfile.

On Kubernetes the pod's init container clones the checkout, so nothing of it
exists when the bot writes the Deployment; yet the devfile decides that
Deployment's image, environment, limits and volumes. The bot therefore reads
the devfile itself, from the commit being run (an approved fork commit, never
the fork's newer head), before it renders the manifests.

It uses git rather than the GitLab files API: the same URL, ref and short-lived
token as the clone, sent the same way (:mod:`bot.git`, the one git wrapper), so
the bot needs no API scope or project id here and reads exactly what the pod
will check out. The fetch leaves file contents out (``--filter=blob:none``):
commits and trees come, and only the chosen devfile's blob is fetched when it
is checked out. A server without partial clone sends everything instead, which
is slower and gives the same answer.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bot import devfile, git
from bot.errors import PermanentError
from bot.runtime import base, workspace

_MR_HEAD = "refs/remotes/origin/mr-head"
#: Regular files; a symlink (120000) is never followed to a devfile, as on Docker.
_REGULAR = ("100644", "100755")


def devfile_plan(
    source: base.Source, policy: workspace.DevfilePolicy
) -> devfile.Plan | None:
    """The plan of the devfile at ``source.sha``, None without a devfile.

    Raises:
        DevfileError: the devfile cannot be used.
        PermanentError: the commit is no longer part of the merge request.
        GitError: the fetch failed (temporary).
    """
    with tempfile.TemporaryDirectory(prefix="rwbot-devfile-") as tmp:
        repo = Path(tmp) / "repo"
        auth = git.auth_env(source.token)
        git.run(["init", "-q", str(repo)])
        git.run(["remote", "add", "origin", source.url], cwd=repo)
        git.run(
            [
                "fetch",
                "-q",
                "--no-tags",
                "--filter=blob:none",
                "origin",
                f"+{source.ref}:{_MR_HEAD}",
            ],
            cwd=repo,
            env=auth,
        )
        commit = source.sha or git.run(["rev-parse", _MR_HEAD], cwd=repo).strip()
        _must_be_reachable(repo, commit)

        chosen = devfile.find(_candidates(repo, commit))
        if chosen is None:
            return None
        # Fetches that one blob from the promisor remote, with the same token.
        git.run(
            ["checkout", "-q", commit, "--", f":(literal){chosen}"],
            cwd=repo,
            env=auth,
        )
        return workspace.devfile_plan(repo, policy)


def _must_be_reachable(repo: Path, commit: str) -> None:
    """Refuse a commit the MR ref no longer contains, as the clone step does.

    Reachability is read from the commits fetched, never by naming ``commit``
    to git: in a partial clone that would fetch it from the server on demand,
    wherever it came from."""
    tip = git.run(["rev-parse", _MR_HEAD], cwd=repo).strip()
    if commit == tip:
        return
    if commit not in git.run(["rev-list", _MR_HEAD], cwd=repo).split():
        raise PermanentError(
            f"commit {commit[:12]} is no longer part of the merge request"
        )


def _candidates(repo: Path, commit: str) -> list[str]:
    """Paths where GitLab looks for a devfile that hold regular files."""
    root = _tree(repo, commit)
    found = [
        name
        for mode, kind, name in root
        if kind == "blob" and mode in _REGULAR and name in devfile.PATHS
    ]
    if ("040000", "tree", devfile.FOLDER) in root:
        found += [
            f"{devfile.FOLDER}/{name}"
            for mode, kind, name in _tree(repo, f"{commit}:{devfile.FOLDER}")
            if kind == "blob" and mode in _REGULAR
        ]
    return found


def _tree(repo: Path, tree: str) -> list[tuple[str, str, str]]:
    """(mode, type, name) of a tree's entries. Names git had to quote (control
    or non-ASCII characters) are left out: GitLab's devfile names are plain."""
    entries = []
    for line in git.run(["ls-tree", tree], cwd=repo).splitlines():
        info, _, name = line.partition("\t")
        mode, kind, _ = info.split(" ", 2)
        if not name.startswith('"'):
            entries.append((mode, kind, name))
    return entries
