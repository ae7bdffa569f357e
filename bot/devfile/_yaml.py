"""YAML loading that remembers where each key and item came from.

``yaml.safe_load`` forgets line numbers, but an MR comment that says "line 12"
is worth a lot. The loader below is a ``SafeLoader`` whose mappings and
sequences are :class:`Map` and :class:`Seq`: plain ``dict`` and ``list`` with
a ``lines`` table (1-based line of each key or item).

Aliases can make a small file describe a huge tree ("billion laughs"), so the
composed node graph is measured before anything is built from it.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

#: Most nodes a devfile may expand to once aliases are followed.
MAX_NODES = 100_000


class Map(dict[Any, Any]):
    """A mapping with its own line and the line of each key."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.lines: dict[Any, int] = {}


class Seq(list[Any]):
    """A sequence with its own line and the line of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.lines: list[int] = []


class YamlError(Exception):
    """The text is not YAML the reader accepts; ``line`` when known."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no types
    pass


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _construct_map(loader: _Loader, node: MappingNode) -> Map:
    loader.flatten_mapping(node)
    result = Map(_line(node))
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            raise YamlError("a mapping key must be a plain value", _line(key_node))
        if key in result:
            raise YamlError(f"duplicate key {key!r}", _line(key_node))
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = _line(key_node)
    return result


def _construct_seq(loader: _Loader, node: SequenceNode) -> Seq:
    result = Seq(_line(node))
    for item in node.value:
        result.append(loader.construct_object(item, deep=True))
        result.lines.append(_line(item))
    return result


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _check_size(root: Node) -> None:
    """Refuse node graphs that expand past :data:`MAX_NODES` (or loop)."""
    budget = MAX_NODES
    stack = [root]
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            raise YamlError(
                f"the document expands to more than {MAX_NODES} values "
                "(aliases used too often?)",
                _line(root),
            )
        if isinstance(node, MappingNode):
            for key, value in node.value:
                stack += (key, value)
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)


def load(text: str) -> Any:
    """Parse one YAML document into plain values, :class:`Map` and :class:`Seq`.

    Raises:
        YamlError: not YAML, several documents, an unhashable or duplicate key,
            or a document too large once aliases are expanded.
    """
    try:
        loader = _Loader(text)
    except yaml.YAMLError as err:
        raise YamlError(f"not valid YAML: {err}", None) from err

    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_size(root)
        return loader.construct_document(root)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = int(mark.line) + 1 if mark is not None else None
        raise YamlError(f"not valid YAML: {err.problem or err}", line) from err
    except yaml.YAMLError as err:
        raise YamlError(f"not valid YAML: {err}", None) from err
    except RecursionError as err:
        raise YamlError("the document is nested too deeply", None) from err
    finally:
        loader.dispose()
