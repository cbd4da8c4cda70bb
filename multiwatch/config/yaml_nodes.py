"""YAML text → `Node` tree, keeping the line of every key and list item.

PyYAML's `safe_load` forgets where values came from; composing the node tree ourselves
keeps a line for each, so errors can say `file:line: key: why`.  A module of its own so
that PyYAML is imported only by what reads a roster (`load.py` imports it lazily).
"""

from __future__ import annotations

import yaml

from multiwatch.config.source import ConfigError, Node

_MERGE_TAG = "tag:yaml.org,2002:merge"
# Bounds for a hostile roster (issue 18: a 7-level alias bomb would need ~18 GB).  A roster
# of 5,000 instances with 20 settings each is 100,000 values and about 1 MiB of YAML.
MAX_ROSTER_BYTES = 1024 * 1024
MAX_ROSTER_VALUES = 200_000


class _TooManyValues(Exception):
    """The document, with every alias expanded, holds more than MAX_ROSTER_VALUES values."""


def parse_yaml(text: str, filename: str) -> Node | None:
    """Parse one YAML document with SafeLoader semantics; None when it is empty."""
    try:
        loader = yaml.SafeLoader(text)  # already checks for unprintable characters
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        problem = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        raise ConfigError(f"{filename}:{line}:{column}: YAML syntax error: {problem}") from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _expanded_size(root, {}, set())  # before anything is expanded
        return _convert(loader, root, root.start_mark.line + 1, set())
    except _TooManyValues:
        raise ConfigError(
            f"{filename}: refused: with its aliases (*name) expanded the roster holds more "
            f"than {MAX_ROSTER_VALUES:,} values, the limit; an alias that repeats an alias "
            "multiplies (a YAML alias bomb)") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        hint = _tab_hint(text, mark.line if mark else None)
        raise ConfigError(f"{where}: YAML syntax error: {_problem(exc)}{hint}") from None
    except yaml.YAMLError as exc:  # anything else PyYAML raises: still one paragraph
        raise ConfigError(f"{filename}: YAML syntax error: {' '.join(str(exc).split())}") from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise ConfigError(f"{filename}: the roster is nested too deeply to be a roster") from None
    finally:
        loader.dispose()


def _tab_hint(text: str, error_line: int | None) -> str:
    """A hint that YAML indentation must use spaces, naming the line of the error when a
    tab indents it, else the first line a tab indents; "" when none does.  PyYAML's own
    message ("found character '\\t' that cannot start any token") never says so."""
    lines = text.splitlines()
    indented = [n for n, line in enumerate(lines)
                if "\t" in line[:len(line) - len(line.lstrip(" \t"))]]
    if not indented:
        return ""
    line = error_line if error_line in indented else indented[0]
    return f"; YAML indentation must use spaces, not tabs (line {line + 1})"


def _expanded_size(node: yaml.Node, sizes: dict[int, int], active: set[int]) -> int:
    """How many values `node` becomes once every alias is copied out: each node is counted
    once (memoised), so a bomb is measured in the time its text takes to read."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    if isinstance(node, yaml.ScalarNode):
        return 1
    if id(node) in active:
        raise _marked(node, "recursive YAML alias (a collection that contains itself)")
    active.add(id(node))
    children = (node.value if isinstance(node, yaml.SequenceNode)
                else [part for pair in node.value for part in pair])
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, active)
        if total > MAX_ROSTER_VALUES:
            raise _TooManyValues
    active.discard(id(node))
    sizes[id(node)] = total
    return total


def _problem(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's problem, with its context when that is what makes it readable."""
    problem, context = exc.problem or "", exc.context or ""
    if problem.startswith("but ") and context:  # "expected a single document..., but found..."
        text = f"{context}, {problem}"
    elif context and exc.context_mark and exc.problem_mark:
        text = f"{problem} ({context} started at line {exc.context_mark.line + 1})"
    else:
        text = problem or context or "invalid YAML"
    return " ".join(text.split())


def _convert(loader: yaml.SafeLoader, node: yaml.Node, line: int, active: set[int]) -> Node:
    # `active` holds the collections being converted: an alias pointing back into one of
    # them is a cycle that would otherwise recurse forever.
    if id(node) in active:
        raise _marked(node, "recursive YAML alias (a collection that contains itself)")
    if isinstance(node, yaml.ScalarNode):
        return Node(loader.construct_object(node, deep=True), line, node.value)
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            items = [
                _convert(loader, item, item.start_mark.line + 1, active) for item in node.value
            ]
            return Node(items, line)
        assert isinstance(node, yaml.MappingNode)
        return Node(_convert_mapping(loader, node, active), line)
    finally:
        active.discard(id(node))


def _convert_mapping(
    loader: yaml.SafeLoader, node: yaml.MappingNode, active: set[int]
) -> dict[str, Node]:
    _reject_duplicates(node)
    loader.flatten_mapping(node)  # resolves `<<: *anchor` merges; explicit keys win
    result: dict[str, Node] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise _marked(key_node, "mapping keys must be plain strings")
        result[str(key_node.value)] = _convert(
            loader, value_node, key_node.start_mark.line + 1, active
        )
    return result


def _reject_duplicates(node: yaml.MappingNode) -> None:
    # PyYAML silently keeps the last duplicate; in a roster that hides a mistake.
    seen: dict[str, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        name = key_node.value
        if name in seen:
            raise _marked(key_node, f'duplicate key "{name}" (first defined at line {seen[name]})')
        seen[name] = key_node.start_mark.line + 1


def _marked(node: yaml.Node, problem: str) -> yaml.MarkedYAMLError:
    return yaml.MarkedYAMLError(problem=problem, problem_mark=node.start_mark)
