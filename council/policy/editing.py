"""Edit one value in a policy's YAML text in place, keeping every comment and the rest of the layout.

The file is composed (not loaded) so each node knows where it starts and ends in the text; the value is
replaced in that span, or a `key: value` is inserted into its mapping (block style: a new line at the
mapping's indentation after its last entry; flow style: before the closing brace). Missing levels are
written as one nested flow mapping (`auto: {start: 2}`). A block mapping is replaced from its first key to
the end of its last entry (a block node's own end is the next key, past any comments between) and, when the
new value is a flat mapping, written in block style at the same indentation.
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from council.errors import CouncilError


class EditError(CouncilError, ValueError):
    """The file's shape does not allow the edit (e.g. the path runs through a scalar)."""


def _find(node: yaml.MappingNode, key: str) -> yaml.Node | None:
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None


def _end_of_entry(node: yaml.Node) -> int:
    """Where the text of a block mapping's last entry ends: after the line of its last scalar or flow node."""
    while isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(last, tuple) else last
    return node.end_mark.index


def _insert(text: str, mapping: yaml.MappingNode, key: str, value: str) -> str:
    if mapping.flow_style:
        close = text.rindex("}", mapping.start_mark.index, mapping.end_mark.index)
        sep = ", " if mapping.value else ""
        return text[:close] + f"{sep}{key}: {value}" + text[close:]
    if not mapping.value:
        raise EditError(f"cannot add {key!r} to an empty mapping")
    column = mapping.value[0][0].start_mark.column
    end = _end_of_entry(mapping.value[-1][1])
    newline = text.find("\n", end)
    line = " " * column + f"{key}: {value}\n"
    if newline == -1:
        return text + "\n" + line
    return text[: newline + 1] + line + text[newline + 1 :]


def _replace(text: str, found: yaml.Node, value: str) -> str:
    """`text` with the node `found` replaced by the YAML snippet `value`."""
    if not (isinstance(found, yaml.MappingNode) and not found.flow_style and found.value):
        return text[: found.start_mark.index] + value + text[found.end_mark.index :]
    first = found.value[0][0].start_mark
    new = yaml.compose(value)
    if isinstance(new, yaml.MappingNode) and all(isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.ScalarNode)
                                                 for k, v in new.value):
        # The user wrote this mapping in block style: keep it, one entry a line at the old entries' column.
        value = ("\n" + " " * first.column).join(f"{value[k.start_mark.index : k.end_mark.index]}: "
                                                 f"{value[v.start_mark.index : v.end_mark.index]}"
                                                 for k, v in new.value)
    return text[: first.index] + value + text[_end_of_entry(found) :]


def set_value(text: str, path: Sequence[str], value: str) -> str:
    """`text` with the value at `path` (mapping keys from the top) set to the YAML snippet `value`."""
    node = yaml.compose(text)
    if not isinstance(node, yaml.MappingNode):
        raise EditError("the policy is not a mapping")
    for depth, key in enumerate(path):
        found = _find(node, key)
        if found is None:
            nested = value
            for inner in reversed(path[depth + 1 :]):
                nested = f"{{{inner}: {nested}}}"
            return _insert(text, node, key, nested)
        if depth == len(path) - 1:
            return _replace(text, found, value)
        if not isinstance(found, yaml.MappingNode):
            raise EditError(f"{'.'.join(path[: depth + 1])} is not a mapping")
        node = found
    raise EditError("empty path")
