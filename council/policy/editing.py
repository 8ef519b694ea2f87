"""Edit values in a policy's YAML text in place, keeping every comment and the rest of the layout.

The file is composed (not loaded) so each node knows where it starts and ends in the text; the value is
replaced in that span, or a `key: value` is inserted into its mapping (block style: a new line at the
mapping's indentation after its last entry; flow style: before the closing brace). Missing levels are
written as one nested flow mapping (`auto: {start: 2}`). A block mapping is replaced from its first key to
the end of its last entry (a block node's own end is the next key, past any comments between) and, when the
new value is a flat mapping, written in block style at the same indentation.

Values shared through YAML's anchors (`&a`, `*a`) and merge keys (`<<: *a`) are text in one place that means
something in several. An edit through an alias or of a merged-in value writes this place's own copy (the
alias replaced, or the key added to the mapping that merges, whose own keys win), the whole inherited mapping
with the new value; `set_values` then refuses any edit that would change anything but the values asked for
(an edit inside an anchored node that other places use).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import yaml

from council.errors import CouncilError


class EditError(CouncilError, ValueError):
    """The file's shape does not allow the edit (e.g. the path runs through a scalar)."""


class _Alias(yaml.Node):
    """An alias (`*a`) where it is written: PyYAML composes one to the anchored node itself, whose marks are
    those of the anchor's place."""

    id = "alias"

    def __init__(self, target: yaml.Node, start_mark: yaml.Mark, end_mark: yaml.Mark) -> None:
        super().__init__(target.tag, target.value, start_mark, end_mark)
        self.target = target


class _Composer(yaml.SafeLoader):
    """SafeLoader's composer, with aliases as `_Alias` and each anchored node's anchor kept in `anchored`."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.anchored: dict[yaml.Node, str] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) and event.anchor in self.anchors:
            self.get_event()
            return _Alias(self.anchors[event.anchor], event.start_mark, event.end_mark)
        node = super().compose_node(parent, index)
        if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
            self.anchored[node] = event.anchor
        return node


def _compose(text: str) -> tuple[yaml.Node | None, dict[yaml.Node, str]]:
    composer = _Composer(text)
    try:
        return composer.get_single_node(), composer.anchored
    finally:
        composer.dispose()


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


def _replace(text: str, found: yaml.Node, value: str, anchor: str | None = None) -> str:
    """`text` with the node `found` replaced by the YAML snippet `value`, keeping its anchor."""
    if not (isinstance(found, yaml.MappingNode) and not found.flow_style and found.value):
        # The node's span starts at its anchor: written again, the places that use it still find it (and
        # `set_values` sees them change).
        prefix = "" if anchor is None or isinstance(found, _Alias) else f"&{anchor} "
        return text[: found.start_mark.index] + prefix + value + text[found.end_mark.index :]
    first = found.value[0][0].start_mark  # after the anchor, which stays
    new = yaml.compose(value)
    if isinstance(new, yaml.MappingNode) and all(isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.ScalarNode)
                                                 for k, v in new.value):
        # The user wrote this mapping in block style: keep it, one entry a line at the old entries' column.
        value = ("\n" + " " * first.column).join(f"{value[k.start_mark.index : k.end_mark.index]}: "
                                                 f"{value[v.start_mark.index : v.end_mark.index]}"
                                                 for k, v in new.value)
    return text[: first.index] + value + text[_end_of_entry(found) :]


class _FlowDumper(yaml.SafeDumper):
    """One line of flow YAML with no anchors of its own (which could clash with the file's)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _flow(data: Any) -> str:
    return yaml.dump(data, Dumper=_FlowDumper, default_flow_style=True, sort_keys=False, width=1 << 30,
                     allow_unicode=True).strip()


def _unshared(data: Any) -> Any:
    """A copy in which no two places are one object (aliases and merges construct shared ones)."""
    if isinstance(data, dict):
        return {k: _unshared(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_unshared(v) for v in data]
    return copy.copy(data)


def _put(data: dict[Any, Any], path: Sequence[str], value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    data[path[-1]] = value


def _with(data: Any, path: Sequence[str], value: str) -> str:
    """`data` (a mapping) as one flow line with the YAML snippet `value` at `path` inside it."""
    if not isinstance(data, dict):
        raise EditError("the value to edit is not a mapping")
    whole = _unshared(data)
    _put(whole, path, yaml.safe_load(value))
    return _flow(whole)


def set_value(text: str, path: Sequence[str], value: str) -> str:
    """`text` with the value at `path` (mapping keys from the top) set to the YAML snippet `value`."""
    node, anchored = _compose(text)
    if not isinstance(node, yaml.MappingNode):
        raise EditError("the policy is not a mapping")
    data: Any = None  # the document as loaded (merges and aliases resolved), read when one is on the path
    for depth, key in enumerate(path):
        rest = path[depth + 1 :]
        found = _find(node, key)
        if found is None:
            if any(isinstance(k, yaml.ScalarNode) and k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value):
                data = yaml.safe_load(text) if data is None else data
                inherited = _at(data, path[:depth])
                if isinstance(inherited, dict) and key in inherited:
                    # Merged in: this mapping's own key wins over the merge, so it must hold the whole value.
                    return _insert(text, node, key, _with(inherited[key], rest, value) if rest else value)
            nested = value
            for inner in reversed(rest):
                nested = f"{{{inner}: {nested}}}"
            return _insert(text, node, key, nested)
        if isinstance(found, _Alias) and rest:
            # Another place's node: this place gets its own copy, with the edit (the other place keeps its own).
            data = yaml.safe_load(text) if data is None else data
            return _replace(text, found, _with(_at(data, path[: depth + 1]), rest, value))
        if not rest:
            return _replace(text, found, value, anchored.get(found))
        if not isinstance(found, yaml.MappingNode):
            raise EditError(f"{'.'.join(path[: depth + 1])} is not a mapping")
        node = found
    raise EditError("empty path")


def _at(data: Any, path: Sequence[str]) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _difference(want: Any, got: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """The first path at which `got` differs from `want`."""
    if isinstance(want, dict) and isinstance(got, dict):
        for key in [*want, *(k for k in got if k not in want)]:
            if key not in want or key not in got:
                return (*path, str(key))
            if (where := _difference(want[key], got[key], (*path, str(key)))) is not None:
                return where
        return None
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            if (where := _difference(w, g, (*path, str(i)))) is not None:
                return where
        return None
    return None if want == got and type(want) is type(got) else path


def set_values(text: str, edits: Sequence[tuple[Sequence[str], str]]) -> str:
    """`text` with each `(path, value)` of `edits` set in turn; EditError when the edited text would mean anything
    else than the old one with those values: a value shared through an anchor or a merge key that the edit would
    change in another place too, or text that no longer reads as YAML."""
    try:
        before = yaml.safe_load(text)
        edited = text
        for path, value in edits:
            edited = set_value(edited, path, value)
        after = yaml.safe_load(edited)
    except yaml.YAMLError as exc:
        raise EditError(f"the edit would not be valid YAML ({str(exc).splitlines()[0]})") from None
    want = _unshared(before)
    for path, value in edits:
        _put(want, path, yaml.safe_load(value))
    if (where := _difference(want, after)) is not None:
        raise EditError(f"the edit would also change {'.'.join(where) or 'the document'}, which shares text with "
                        "what is edited (a YAML anchor or merge key); edit the policy by hand")
    return edited
