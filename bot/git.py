"""Git, run by the bot itself to fetch a merge request's code.

The Docker runtime fetches on the bot's side and copies the result into the
workspace, so the workspace never sees a credential and needs no network path to
GitLab. The credential reaches git through ``GIT_CONFIG_*`` environment variables
(an ``Authorization`` header), never through argv, the remote URL or a file.

Every git process goes through :func:`run`, which takes an argument list (never a
shell string), logs the quoted command and raises :class:`GitError` carrying git's
own message.
"""

from __future__ import annotations

import base64
import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from bot.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)


class GitError(TemporaryError):
    """A git command failed; ``stderr`` holds what git said."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
) -> str:
    """Run git with ``argv`` (without the leading ``git``); return its stdout."""
    command = ["git", *argv]
    log.debug("running git", extra={"command": shlex.join(command)})
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/nonexistent"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "LC_ALL": "C",
        **(env or {}),
    }
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise GitError(f"git {argv[0]} timed out", "") from err
    if done.returncode != 0:
        raise GitError(f"git {argv[0]} failed ({done.returncode})", done.stderr.strip())
    return done.stdout


def auth_env(token: str) -> dict[str, str]:
    """Environment that makes git send ``token`` as HTTP basic auth."""
    if not token:
        return {}
    basic = base64.b64encode(f"oauth2:{token}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


def bundle(url: str, ref: str, sha: str, since: str, token: str, dest: Path) -> None:
    """Write a git bundle of ``ref`` at ``sha`` (only what ``since`` lacks, when
    ``since`` is an ancestor) to ``dest``; its single ref is ``mr-head``."""
    work = dest.parent / "repo"
    fetch_checkout(url, ref, sha, token, work)
    run(["update-ref", "refs/heads/mr-head", sha], cwd=work)
    spec = ["refs/heads/mr-head"]
    try:
        run(["merge-base", "--is-ancestor", since, sha], cwd=work)
        if since != sha:
            spec.append(f"^{since}")
    except GitError:
        pass  # history was rewritten: send all of it
    run(["bundle", "create", "-q", str(dest), *spec], cwd=work)


def fetch_checkout(url: str, ref: str, sha: str, token: str, dest: Path) -> str:
    """Fetch ``ref`` from ``url`` into a new repository at ``dest`` and check out
    ``sha`` (or the ref's tip when ``sha`` is empty); return the commit checked out.

    ``origin`` points at ``url``, which carries no credential, so the repository
    can be copied anywhere without leaking it.
    """
    dest.mkdir(parents=True, exist_ok=True)
    run(["init", "-q", "-b", "review", str(dest)])
    run(["remote", "add", "origin", url], cwd=dest)
    # Reviewers with write access share this repository through a group.
    run(["config", "core.sharedRepository", "group"], cwd=dest)
    run(
        ["fetch", "-q", "--no-tags", "origin", f"+{ref}:refs/remotes/origin/mr-head"],
        cwd=dest,
        env=auth_env(token),
    )
    target = sha or "refs/remotes/origin/mr-head"
    try:
        run(["checkout", "-q", "--no-track", "-B", "review", target], cwd=dest)
    except GitError as err:
        raise PermanentError(
            f"commit {sha[:12]} is no longer part of the merge request"
        ) from err
    return run(["rev-parse", "HEAD"], cwd=dest).strip()
