"""Reading typed fields out of the loaded YAML while collecting problems.

Every getter records a :class:`Problem` (key path and line) instead of raising,
so one pass reports everything that is wrong, and returns ``None`` (or an empty
value) for what it could not read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from bot.devfile import quantity
from bot.devfile._yaml import Map, Seq
from bot.devfile.model import INJECT_EDITOR, Problem

# Devfile ids and names: lower-case letters, digits and dashes, 63 at most.
# https://devfile.io/docs/2.2.0/devfile-validation-rules
NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
# GitLab keeps this prefix for what it injects (its editor, the project cloner).
RESERVED_PREFIX = "gl-"
# ``{{name}}`` in a string field refers to a top-level variable.
_VARIABLE = re.compile(r"\{\{\s*([^{}\s]*)\s*\}\}")


def join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


class Fields:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.variables: dict[str, str] = {}
        #: Every component name read, with its kind (even unsupported kinds),
        #: so references to them are not reported twice.
        self.kinds: dict[str, str] = {}

    def problem(
        self, path: str, line: int | None, message: str, *, unsupported: bool = False
    ) -> None:
        self.problems.append(Problem(path, line, message, unsupported))

    # Structure ---------------------------------------------------------------

    def mapping(self, value: Any, path: str, line: int | None) -> Map | None:
        if isinstance(value, Map):
            return value
        self.problem(path, line, "must be a mapping of keys to values")
        return None

    def keys(
        self,
        m: Map,
        path: str,
        known: frozenset[str],
        unsupported: Mapping[str, str] | None = None,
    ) -> None:
        """Report keys that GitLab refuses (``unsupported``) or that devfile
        2.2 does not define there."""
        unsupported = unsupported or {}
        for key in m:
            line = m.lines[key]
            if isinstance(key, str) and key in unsupported:
                self.problem(join(path, key), line, unsupported[key], unsupported=True)
            elif key not in known:
                self.problem(join(path, key), line, "is not a devfile 2.2 key here")

    def line(self, m: Map, key: str) -> int:
        return m.lines.get(key, m.line)

    def items(self, m: Map, key: str, path: str) -> Iterator[tuple[Any, str, int]]:
        """Each item of the list at ``m[key]`` with its path and line."""
        value = m.get(key)
        if value is None:
            return
        if not isinstance(value, Seq):
            self.problem(join(path, key), self.line(m, key), "must be a list")
            return
        for index, item in enumerate(value):
            yield item, join(join(path, key), index), value.lines[index]

    # Scalars -----------------------------------------------------------------

    def string(
        self,
        m: Map,
        key: str,
        path: str,
        *,
        required: bool = False,
        expand: bool = True,
    ) -> str | None:
        value = m.get(key)
        if value is None:
            if required:
                self.problem(join(path, key), m.line, "is required")
            return None
        if not isinstance(value, str):
            self.problem(join(path, key), self.line(m, key), "must be a string")
            return None
        if not expand:
            return value
        return self.expand(value, join(path, key), self.line(m, key))

    def boolean(self, m: Map, key: str, path: str) -> bool | None:
        value = m.get(key)
        if value is None or isinstance(value, bool):
            return value
        self.problem(join(path, key), self.line(m, key), "must be true or false")
        return None

    def strings(self, m: Map, key: str, path: str) -> tuple[str, ...]:
        result = []
        for item, item_path, line in self.items(m, key, path):
            if isinstance(item, str):
                result.append(self.expand(item, item_path, line))
            else:
                self.problem(item_path, line, "must be a string")
        return tuple(result)

    def quantity(self, m: Map, key: str, path: str) -> str | None:
        """A Kubernetes quantity; YAML numbers (``cpuLimit: 0.5``) are taken
        as written, as the devfile docs' own examples use them."""
        value = m.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        elif value is not None and not isinstance(value, str):
            self.problem(join(path, key), self.line(m, key), "must be a string")
            return None
        if value is None:
            return None

        value = self.expand(value, join(path, key), self.line(m, key))
        try:
            quantity.parse(value)
        except ValueError as err:
            self.problem(join(path, key), self.line(m, key), str(err))
            return None

        return value

    def name(self, m: Map, key: str, path: str, *, max_length: int = 63) -> str | None:
        """A devfile name or id, which GitLab also forbids to start ``gl-``."""
        value = self.string(m, key, path, required=True, expand=False)
        if value is None:
            return None

        where, line = join(path, key), self.line(m, key)
        if value.startswith(RESERVED_PREFIX):
            self.problem(where, line, f"{value!r} must not start with 'gl-'")
        if len(value) > max_length:
            self.problem(where, line, f"{value!r} is longer than {max_length}")
        elif not NAME.fullmatch(value):
            self.problem(
                where,
                line,
                f"{value!r} must be lower-case letters, digits and '-', "
                "starting and ending with a letter or digit",
            )

        return value

    def expand(self, value: str, path: str, line: int | None) -> str:
        """Replace ``{{name}}`` by the variable's value (devfile variables)."""

        def replace(match: re.Match[str]) -> str:
            name = match[1]
            if name in self.variables:
                return self.variables[name]
            self.problem(path, line, f"refers to undefined variable {name!r}")
            return match[0]

        return _VARIABLE.sub(replace, value)

    def attributes(
        self, m: Map, path: str, *, restricted: tuple[str, ...]
    ) -> dict[str, Any]:
        if "attributes" not in m:
            return {}
        where = join(path, "attributes")
        attributes = self.mapping(m["attributes"], where, self.line(m, "attributes"))
        if attributes is None:
            return {}

        for key in attributes:
            line = attributes.lines[key]
            if not isinstance(key, str):
                self.problem(join(where, key), line, "a name must be a string")
            elif key in restricted:
                message = f"the `{key}` attribute is restricted by GitLab Workspaces"
                self.problem(join(where, key), line, message, unsupported=True)
        for key in (INJECT_EDITOR, "overrideCommand"):
            self.boolean(attributes, key, where)
        return {str(k): v for k, v in attributes.items()}
