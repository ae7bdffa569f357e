"""Real bare git repositories for the double, driven through the ``git`` CLI.

Commits are made with plumbing (``hash-object``, ``update-index`` on a private
index file, ``commit-tree``, ``update-ref``), so no working tree is needed and a
commit is a single ref update that concurrent fetches see atomically.
Every git call goes through :meth:`Repos.run`; the environment shuts out the
machine's own git configuration so tests behave the same everywhere.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

AUTHOR_NAME = "Test"
AUTHOR_EMAIL = "test@example.com"


class GitError(RuntimeError):
    """A git command failed; the message carries the command and its stderr."""


def git_env() -> dict[str, str]:
    """An environment for git that ignores global and system configuration."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith("GIT_")
    }
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME=AUTHOR_NAME,
        GIT_AUTHOR_EMAIL=AUTHOR_EMAIL,
        GIT_COMMITTER_NAME=AUTHOR_NAME,
        GIT_COMMITTER_EMAIL=AUTHOR_EMAIL,
    )
    return env


class Repos:
    """Bare repositories under ``root``, one per ``path_with_namespace``."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def path(self, path_with_namespace: str) -> Path:
        return self.root / f"{path_with_namespace}.git"

    def run(self, repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
        """Run ``git --git-dir=repo args`` and return its stripped stdout."""
        command = ["git", f"--git-dir={repo}", *args]
        result = subprocess.run(
            command, capture_output=True, text=True, env=env or git_env()
        )
        if result.returncode != 0:
            raise GitError(f"{' '.join(command)} failed: {result.stderr.strip()}")

        return result.stdout.strip()

    def create(self, path_with_namespace: str, default_branch: str) -> Path:
        repo = self.path(path_with_namespace)
        repo.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "git",
                "init",
                "--bare",
                "-q",
                f"--initial-branch={default_branch}",
                str(repo),
            ],
            check=True,
            env=git_env(),
            capture_output=True,
        )
        # Like GitLab: the merge request refs are served to anyone who may read.
        self.run(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
        return repo

    def commit(
        self,
        repo: Path,
        branch: str,
        files: dict[str, str | None],
        message: str,
        parent: str | None = None,
    ) -> str:
        """Commit ``files`` (``None`` deletes a path) on top of ``parent``.

        ``parent`` defaults to the branch head; the branch ref is moved to the
        new commit, which is returned.
        """
        if parent is None:
            parent = self.resolve(repo, f"refs/heads/{branch}")
        with tempfile.TemporaryDirectory() as scratch:
            env = git_env()
            env["GIT_INDEX_FILE"] = os.path.join(scratch, "index")
            if parent:
                self.run(repo, "read-tree", parent, env=env)
            for name, content in files.items():
                if content is None:
                    self.run(repo, "update-index", "--force-remove", name, env=env)
                    continue
                blob = self._blob(repo, content)
                info = f"100644,{blob},{name}"
                self.run(repo, "update-index", "--add", "--cacheinfo", info, env=env)
            tree = self.run(repo, "write-tree", env=env)

        parents = ["-p", parent] if parent else []
        sha = self.run(repo, "commit-tree", tree, *parents, "-m", message)
        self.run(repo, "update-ref", f"refs/heads/{branch}", sha)

        return sha

    def _blob(self, repo: Path, content: str) -> str:
        result = subprocess.run(
            ["git", f"--git-dir={repo}", "hash-object", "-w", "--stdin"],
            input=content.encode(),
            capture_output=True,
            env=git_env(),
            check=True,
        )
        return result.stdout.decode().strip()

    def resolve(self, repo: Path, ref: str) -> str | None:
        """The sha ``ref`` points at, or ``None`` when it does not exist."""
        try:
            return self.run(repo, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}")
        except GitError:
            return None

    def set_ref(self, repo: Path, ref: str, sha: str) -> None:
        self.run(repo, "update-ref", ref, sha)

    def copy_ref(self, source: Path, source_ref: str, target: Path, ref: str) -> None:
        """Fetch ``source_ref`` of another repository into ``target`` as ``ref``."""
        self.run(
            target, "fetch", "-q", "--no-tags", str(source), f"+{source_ref}:{ref}"
        )

    def merge_base(self, repo: Path, one: str, other: str) -> str:
        """The best common ancestor, or "" when the histories are unrelated (a
        "fork" made as a separate project whose first commit differs)."""
        try:
            return self.run(repo, "merge-base", one, other)
        except GitError:
            return ""

    def merge(self, repo: Path, branch: str, sha: str, message: str) -> str:
        """Merge commit ``sha`` into ``branch``, like GitLab's merge method "merge".

        Fast-forward is avoided on purpose: GitLab's default creates a merge
        commit. A conflict raises :class:`GitError`.
        """
        head = self.run(repo, "rev-parse", f"refs/heads/{branch}")
        tree = self.run(repo, "merge-tree", "--write-tree", head, sha).splitlines()[0]
        commit = self.run(
            repo, "commit-tree", tree, "-p", head, "-p", sha, "-m", message
        )
        self.run(repo, "update-ref", f"refs/heads/{branch}", commit)

        return commit

    def show(self, repo: Path, sha: str, fmt: str) -> str:
        """One commit's fields in ``git log --format`` notation."""
        return self.run(repo, "log", "-1", f"--format={fmt}", sha)
