"""The GitLab double in a process of its own, seeded with many merge requests.

The reconcile benchmark runs the double here so that its request handling does
not share a GIL with the bot it measures. Start it as
``python -m benchmarks._double --mrs N --projects P --changed K``; it prints one
JSON line (URL, the bot's token and user id, and every MR as the facts the bot
tracks), then obeys lines on standard input:

- ``toggle``: the K "changed" MRs get another head commit (a push whose
  webhook was missed), answered with ``ok``;
- end of input: stop.

``open_mr`` makes a real commit per MR (several git processes each), too slow
for 10,000 MRs, so one real MR is opened per project and the rest are copies
of its record with their own iid, branch and title. The REST API serves them
like any other; only their git refs are missing, which no resync reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from tests.gitlab_double import GitLabDouble
from tests.gitlab_double.state import MergeRequest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mrs", type=int, required=True)
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--changed", type=int, default=0)
    options = parser.parse_args(argv)

    with GitLabDouble() as double:
        records, heads = _seed(double, options.mrs, options.projects)
        step = max(1, len(records) // options.changed) if options.changed else 0
        changed = records[::step][: options.changed] if step else []
        notes = {
            (mr.project_id, mr.iid): double.add_note(
                _ref(mr), double.bot_user, "<!-- review-workspace-bot -->"
            )["id"]
            for mr in changed
        }
        hello = {
            "url": double.url,
            "token": double.token,
            "bot_user_id": double.bot_user["id"],
            "mrs": [_facts(double, mr) for mr in records],
            "notes": [[pid, iid, note] for (pid, iid), note in notes.items()],
        }
        _say(json.dumps(hello))
        for line in sys.stdin:
            if line.strip() == "toggle":
                _toggle(double, changed, heads)
                _say("ok")

    return 0


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _ref(mr: MergeRequest) -> dict[str, Any]:
    return {"project_id": mr.project_id, "iid": mr.iid}


def _seed(
    double: GitLabDouble, count: int, project_count: int
) -> tuple[list[MergeRequest], dict[int, tuple[str, str]]]:
    """``count`` open MRs spread over ``project_count`` projects.

    Returns the records and, per project, two commits an MR head can be at.
    """
    author = double.add_user("alice")
    templates = []
    heads: dict[int, tuple[str, str]] = {}
    for p in range(min(project_count, count)):
        project = double.add_project(f"bench/app-{p}")
        mr = double.open_mr(
            project, "change-1", {"CHANGE.md": "change\n"}, author=author
        )
        main_sha = double.branch_sha(project, "main")
        assert main_sha is not None
        heads[project["id"]] = (mr["sha"], main_sha)
        templates.append(double.store.mrs[(project["id"], mr["iid"])])

    records = list(templates)
    store = double.store
    with store.lock:
        for i in range(count - len(templates)):
            template = templates[i % len(templates)]
            target = store.projects[template.project_id]
            iid = target.next_iid
            target.next_iid += 1
            record = dataclasses.replace(
                template,
                id=store.next_id(),
                iid=iid,
                title=f"Change {iid}",
                source_branch=f"change-{iid}",
                changes={},
            )
            store.mrs[(record.project_id, iid)] = record
            records.append(record)

    return records, heads


def _toggle(
    double: GitLabDouble, changed: list[MergeRequest], heads: dict[int, tuple[str, str]]
) -> None:
    with double.store.lock:
        now = double.store.now()
        for mr in changed:
            first, second = heads[mr.project_id]
            mr.sha = second if mr.sha == first else first
            mr.updated_at = now


def _facts(double: GitLabDouble, record: MergeRequest) -> dict[str, Any]:
    """What the bot keeps of an MR, from the API's own JSON for it."""
    mr = double.mr(_ref(record))
    project = double.store.projects[record.project_id]
    return {
        "project_id": mr["project_id"],
        "iid": mr["iid"],
        "project_path": project.path_with_namespace,
        "project_http_url": f"{double.url}/{project.path_with_namespace}.git",
        "web_url": mr["web_url"],
        "title": mr["title"],
        "state": mr["state"],
        "sha": mr["sha"],
        "draft": mr["draft"],
        "is_fork": mr["source_project_id"] != mr["target_project_id"],
        "source_branch": mr["source_branch"],
        "updated_at": mr["updated_at"],
    }


if __name__ == "__main__":
    sys.exit(main())
