"""An in-memory :class:`~bot.runtime.base.Runtime` for the reconcile benchmark.

It answers at once from a dict, so a reconcile pass measures the bot and
GitLab, not a container engine. Every workspace it is told about is RUNNING
in the generation it was started with; ``list_ours`` lists them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from bot.runtime.base import (
    ExecResult,
    Listed,
    Phase,
    Runtime,
    Spec,
    Status,
    Terminal,
    WorkspaceKey,
)


class MemoryRuntime(Runtime):
    def __init__(self, running: Iterable[tuple[WorkspaceKey, int]] = ()) -> None:
        self.generations: dict[WorkspaceKey, int] = dict(running)
        self.started: list[WorkspaceKey] = []
        self.removed: list[WorkspaceKey] = []

    def ensure_running(self, spec: Spec) -> Status:
        self.generations[spec.key] = spec.generation
        self.started.append(spec.key)
        return Status(Phase.RUNNING, generation=spec.generation)

    def status(self, key: WorkspaceKey) -> Status:
        generation = self.generations.get(key)
        if generation is None:
            return Status(Phase.MISSING)
        return Status(Phase.RUNNING, generation=generation)

    def stop(self, key: WorkspaceKey) -> None:
        pass

    def remove(self, key: WorkspaceKey) -> None:
        self.generations.pop(key, None)
        self.removed.append(key)

    def list_ours(self) -> Iterator[Listed]:
        for key, generation in list(self.generations.items()):
            yield Listed(key, generation, f"rwbot-{key.slug()}")

    def exec(
        self, key: WorkspaceKey, argv: Sequence[str], *, user: str = "root"
    ) -> ExecResult:
        return ExecResult(0, b"")

    def open_terminal(
        self, key: WorkspaceKey, argv: Sequence[str], *, rows: int, cols: int
    ) -> Terminal:
        raise NotImplementedError("the benchmark runtime has no terminals")
