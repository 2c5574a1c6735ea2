"""The one YAML reader of the harness: safe tags only, no duplicate keys, bounded alias expansion.

`yaml.safe_load` builds no objects from tags, but it silently keeps the last of two equal keys,
and a few lines of nested aliases ("billion laughs") expand into billions of values once the
result is copied, printed or hashed. This loader refuses both while composing the document, so
a hostile spec fails in milliseconds with the line it comes from.
"""

from __future__ import annotations

from typing import Any

import yaml

from harness.errors import ConfigError

MAX_EXPANDED_NODES = 100_000
"""Scalars + collections a document may hold once every alias is expanded (specs hold hundreds)."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys, recursive aliases and alias bombs."""

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _check_expanded_size(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<: *defaults` merges are meant to be overridden
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise ConfigError(f"duplicate key {key!r} (line {line}; first set on line {seen[key]}): "
                                      "each key may appear once in a mapping")
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: SafeConstructor reports it
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a node graph that is recursive or expands to more than MAX_EXPANDED_NODES nodes."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative post-order walk, each shared (aliased) node measured once
        node, children_done = stack.pop()
        ident = id(node)
        if ident in sizes:
            continue
        children = _children(node)
        if not children_done:
            if ident in in_progress:
                raise ConfigError(f"recursive alias (line {node.start_mark.line + 1}): a value may not contain itself")
            in_progress.add(ident)
            stack.append((node, True))
            for child in children:
                if id(child) in in_progress and id(child) not in sizes:
                    raise ConfigError(
                        f"recursive alias (line {child.start_mark.line + 1}): a value may not contain itself")
                stack.append((child, False))
            continue
        in_progress.discard(ident)
        sizes[ident] = 1 + sum(sizes[id(child)] for child in children)
        if sizes[ident] > MAX_EXPANDED_NODES:
            raise ConfigError(f"aliases expand to more than {MAX_EXPANDED_NODES:,} values (line "
                              f"{node.start_mark.line + 1}): refused as an alias bomb")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml_text(text: str) -> Any:
    """Parse one YAML document with StrictLoader (raises ConfigError or yaml.YAMLError)."""
    loader = StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
