"""Devfiles: finding, reading and checking one, and what it asks the bot for.

Teams that use GitLab Workspaces describe their environment in a devfile
(https://devfile.io/docs/2.2.0/devfile-schema); the review workspace follows
it. This package is pure (no I/O): the caller fetches the file.

- :func:`find` picks the devfile among a repository's paths, as GitLab looks.
- :func:`parse` reads devfile 2.2 text into a :class:`Devfile`, enforcing the
  structure and GitLab's rules (https://docs.gitlab.com/user/workspace/#devfile),
  or raises :class:`DevfileError` listing every problem with its line and key.
- :func:`workspace_plan` turns a devfile into the :class:`Plan` for the one
  container a review workspace runs, the devfile's *main* container: the one
  marked ``gl/inject-editor: true`` (where GitLab puts its editor), else the
  first container component.
"""

from __future__ import annotations

from collections.abc import Iterable

from bot.devfile import _yaml
from bot.devfile._read import Reader
from bot.devfile.model import (
    INJECT_EDITOR,
    ApplyCommand,
    Command,
    Component,
    Container,
    Devfile,
    DevfileError,
    Endpoint,
    Env,
    Events,
    ExecCommand,
    Metadata,
    Problem,
    Volume,
    VolumeMount,
    override_command,
)
from bot.devfile.plan import Ignored, Plan, PostStart, Resources, workspace_plan

__all__ = [
    "INJECT_EDITOR",
    "MAX_BYTES",
    "PATHS",
    "ApplyCommand",
    "Command",
    "Component",
    "Container",
    "Devfile",
    "DevfileError",
    "Endpoint",
    "Env",
    "Events",
    "ExecCommand",
    "Ignored",
    "Metadata",
    "Plan",
    "PostStart",
    "Problem",
    "Resources",
    "Volume",
    "VolumeMount",
    "find",
    "override_command",
    "parse",
    "workspace_plan",
]

#: The devfiles at the repository root, in the order :func:`find` prefers them.
PATHS = (".devfile.yaml", ".devfile.yml")
#: The folder for named devfiles (``.devfile/<name>.yaml``; no subfolders).
FOLDER = ".devfile"
#: GitLab refuses devfiles larger than 3 MB.
MAX_BYTES = 3 * 1024 * 1024


def find(paths_in_repo: Iterable[str]) -> str | None:
    """The devfile to use among a repository's file paths, or None.

    GitLab lets the person creating a workspace pick any of the devfiles it
    recognises; a bot has nobody to ask, so it takes, in this order:

    1. ``.devfile.yaml``, then ``.devfile.yml`` at the root;
    2. else the first ``.devfile/<name>.yaml`` or ``.devfile/<name>.yml`` by
       path (code point order), files directly in ``.devfile/`` only.

    Paths are relative to the repository root (a leading ``/`` is allowed).
    """
    paths = {path.removeprefix("/") for path in paths_in_repo}
    for path in PATHS:
        if path in paths:
            return path

    named = sorted(path for path in paths if _is_named_devfile(path))
    return named[0] if named else None


def _is_named_devfile(path: str) -> bool:
    folder, slash, name = path.partition("/")
    stem, dot, extension = name.rpartition(".")
    return (
        folder == FOLDER
        and bool(slash)
        and "/" not in name
        and bool(dot and stem)
        and extension in ("yaml", "yml")
    )


def parse(text: str) -> Devfile:
    """Read and check a devfile.

    Raises:
        DevfileError: every problem found, each with its key path and line;
            features GitLab Workspaces does not support are marked unsupported.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise DevfileError([Problem("", None, "the devfile is larger than 3 MB")])
    try:
        tree = _yaml.load(text)
    except _yaml.YamlError as err:
        raise DevfileError([Problem("", err.line, err.message)]) from err

    reader = Reader()
    devfile = reader.devfile(tree)
    if reader.problems or devfile is None:
        raise DevfileError(_in_order(reader.problems))

    return devfile


def _in_order(problems: list[Problem]) -> list[Problem]:
    """Problems in the order of the file, so the comment reads top-down."""
    no_line = 1 << 62
    return sorted(problems, key=lambda p: no_line if p.line is None else p.line)
