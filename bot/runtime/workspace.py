"""What any runtime does the same way to a new workspace: follow its devfile.

The devfile is read from the checkout of the commit being run (see
:mod:`bot.devfile` for the rules), and turned into the image, environment,
limits, volumes and postStart commands of the workspace. Anything of it the bot
does not apply is turned into a note for the MR comment, never dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bot import accounts, devfile, endpoints
from bot.devfile import quantity
from bot.errors import PermanentError

#: Where postStart commands' output goes inside the workspace (readable by all
#: joined reviewers, like the checkout).
POST_START_LOG = "/var/log/rwbot-poststart.log"


def post_start_argv(command_line: str, directory: str) -> list[str]:
    """Run one postStart command line in ``directory``: as the workspace's
    devfile account, never as root (:func:`bot.accounts.run_argv`), with the
    command line an argument, never spliced into a string."""
    return accounts.run_argv(command_line, directory, POST_START_LOG)


def post_start_note(command_id: str, code: int, output: bytes) -> str | None:
    """What the MR comment says of a postStart command that ran: nothing when
    it succeeded. Its own output goes to the log, so anything in ``output`` is
    the tool's reason for not running it (a working directory it refuses)."""
    if code == 0:
        return None
    said = output.decode(errors="replace").strip()
    if said:
        return f"postStart command {command_id} was not run: {said[-300:]}"
    return (
        f"postStart command {command_id} failed (exit {code}); its output is in "
        f"{POST_START_LOG}"
    )


def post_start_summary(count: int) -> str:
    return f"Ran {count} postStart command(s); output in {POST_START_LOG}"


@dataclass(frozen=True)
class DevfilePolicy:
    """What an admin lets devfiles ask for."""

    #: ``fnmatch`` patterns the image must match; empty allows any image.
    allowed_images: tuple[str, ...] = ()
    max_memory: str | None = None
    max_cpu: str | None = None


def devfile_plan(checkout: Path, policy: DevfilePolicy) -> devfile.Plan | None:
    """The devfile's plan, None without a devfile; raises DevfileError."""
    paths = [p.relative_to(checkout).as_posix() for p in _candidates(checkout)]
    found = devfile.find(paths)
    if found is None:
        return None
    with (checkout / found).open("rb") as f:
        # One byte past the limit is enough for parse() to refuse it.
        text = f.read(devfile.MAX_BYTES + 1).decode("utf-8", errors="replace")
    parsed = devfile.parse(text)
    return devfile.workspace_plan(
        parsed,
        allowed_images=policy.allowed_images,
        max_memory=policy.max_memory,
        max_cpu=policy.max_cpu,
    )


def _candidates(checkout: Path) -> list[Path]:
    found = [checkout / name for name in devfile.PATHS if (checkout / name).is_file()]
    folder = checkout / devfile.FOLDER
    if folder.is_dir() and not folder.is_symlink():
        found += [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
    return [p for p in found if not p.is_symlink()]


def notes(plan: devfile.Plan | None) -> list[str]:
    """What of the devfile was not applied, in words for the MR comment."""
    if plan is None:
        return []
    said = [
        f"devfile {item.path}"
        + (f" (line {item.line})" if item.line else "")
        + f": {item.reason}"
        for item in plan.ignored
    ]
    shown, not_shown = endpoints.exposed(plan.endpoints)
    said += not_shown
    said += [endpoints.note(e.name) for e in shown]
    if not plan.override_command and (plan.command or plan.args):
        said.append("the devfile's command is not run: the workspace keeps its own")
    return said


def endpoint_record(plan: devfile.Plan | None) -> str:
    """The exposed endpoints as the runtime keeps them with the workspace:
    JSON ``{name: [port, path]}``, read back by :func:`endpoint_in`."""
    shown = endpoints.exposed(plan.endpoints)[0] if plan is not None else []
    return json.dumps({e.name: [e.target_port, e.path or "/"] for e in shown})


def endpoint_in(record: str | None, name: str) -> tuple[int, str]:
    """Port and start path of endpoint ``name`` in a :func:`endpoint_record`.

    Raises:
        PermanentError: the workspace has no exposed endpoint of that name.
    """
    try:
        found: Mapping[str, list[object]] = json.loads(record or "{}")
        port, path = found[name]
    except (ValueError, KeyError, TypeError):
        raise PermanentError(
            f"This workspace has no endpoint named {name!r}."
        ) from None
    if not isinstance(port, int) or not isinstance(path, str):
        raise PermanentError(f"This workspace has no endpoint named {name!r}.")
    return port, path


def memory_bytes(plan: devfile.Plan) -> int | None:
    value = plan.resources.memory_limit or plan.resources.memory_request
    return int(quantity.parse(value)) if value else None


def cpus(plan: devfile.Plan) -> float | None:
    value = plan.resources.cpu_limit or plan.resources.cpu_request
    return float(quantity.parse(value)) if value else None
