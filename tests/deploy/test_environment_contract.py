"""The environment variables: what the code reads, what multiwatch.config.environment documents,
and what the Dockerfile, compose file, systemd units, Kubernetes manifests and README name, agree.

The code is read with `ast`, so reads through constants and loops over literal names count
(`for name in ("INCLUDE", "EXCLUDE"): env_node(environ, name)`); a read whose name cannot be
worked out fails the test unless its function is listed in DYNAMIC_READS.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from multiwatch.config.environment import ENVIRONMENT_VARIABLES
from tests.deploy.artifacts import (
    COMPOSE,
    DOCKERFILE,
    KUBERNETES,
    REPO,
    SYSTEMD,
    compose_variables,
    dockerfile_stages,
)

PACKAGE = REPO / "multiwatch"

# Functions that read a variable whose name is a parameter, with why that is fine.
DYNAMIC_READS = {
    ("source.py", "expand_vars"): "`${VAR}` in a roster: the roster names the variable",
    ("environment.py", "env_node"): "a helper: its callers are scanned, with their names",
}

# Documented, but not read by the code yet (landing in a parallel change).  Left out of the
# "every documented name is read" check only while the code does not read it.
# Names in the artifacts that are not multiwatch's, and why they are there.
NOT_MULTIWATCH = {
    "PYTHON_VERSION": "Dockerfile build argument: the python base image tag",
    "PYTHONDONTWRITEBYTECODE": "Python's own: no .pyc writes (read-only root filesystem)",
    "PYTHONUNBUFFERED": "Python's own: log lines reach `docker logs` at once",
    "PIP_NO_CACHE_DIR": "pip's own, at image build time: no cache in the image",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip's own, at image build time: no network check",
    "RABBITMQ_DEFAULT_USER": "the rabbitmq image's first-boot user (docker-compose.yaml)",
    "RABBITMQ_DEFAULT_PASS": "the rabbitmq image's first-boot password (docker-compose.yaml)",
    "MAINPID": "systemd's variable in ExecReload=: the supervisor's pid",
    "VAR": "README's placeholder in the `${VAR}` syntax explanation",
    "PR_SET_PDEATHSIG": "README names the Linux prctl option, not a variable",
    "PYTEST_ARGS": "README: the Makefile variable of `make test`",
    "RESOLVE_BENEATH": "README names the Linux openat2 flag, not a variable",
    "RESOLVE_NO_SYMLINKS": "README names the Linux openat2 flag, not a variable",
    "O_NOFOLLOW": "README names the Linux open flag, not a variable",
    "RESOURCE_LOCKED": "README names the AMQP reply code (405) a refused lease gets",
    "PWD": "the shell's current directory in the README's docker run (the checkout)",
    "CAP_SYS_NICE": "README names the Linux capability a negative nice needs, not a variable",
}

_ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[A-Z]{2,}")
_DOLLAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


# ------------------------------------------------------------------ the code


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _enclosing_functions(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> list[ast.AST]:
    """The functions around `node`, innermost first."""
    functions: list[ast.AST] = []
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions.append(node)
    return functions


def _read_name_argument(call: ast.AST) -> ast.expr | None:
    """The expression naming the variable, if `call` reads one from an environment."""
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute | ast.Name):
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id
        if name == "env_node" and len(call.args) >= 2:
            return call.args[1]
        if isinstance(func, ast.Attribute) and call.args:
            receiver = ast.unparse(func.value)
            if name in ("get", "pop", "setdefault") and receiver.endswith("environ"):
                return call.args[0]
            if name == "getenv" and receiver == "os":
                return call.args[0]
    if isinstance(call, ast.Subscript) and ast.unparse(call.value).endswith("environ"):
        return call.slice
    if (isinstance(call, ast.Compare) and len(call.ops) == 1
            and isinstance(call.ops[0], ast.In | ast.NotIn)
            and ast.unparse(call.comparators[0]).endswith("environ")):
        return call.left
    return None


def _literal_names(iterable: ast.expr, position: int | None) -> set[str] | None:
    """String constants of a literal tuple/list (element `position` of each inner tuple)."""
    if not isinstance(iterable, ast.Tuple | ast.List):
        return None
    names = set()
    for item in iterable.elts:
        if position is not None:
            if not isinstance(item, ast.Tuple | ast.List):
                return None
            item = item.elts[position]
        if not (isinstance(item, ast.Constant) and isinstance(item.value, str)):
            return None
        names.add(item.value)
    return names


def _loop_names(name: str, scope: ast.AST) -> set[str] | None:
    """The literal names a loop variable takes, from a `for`/comprehension in `scope`."""
    for node in ast.walk(scope):
        if not isinstance(node, ast.For | ast.comprehension):
            continue
        target, iterable = node.target, node.iter
        if isinstance(target, ast.Name) and target.id == name:
            return _literal_names(iterable, None)
        if isinstance(target, ast.Tuple):
            ids = [t.id if isinstance(t, ast.Name) else None for t in target.elts]
            if name in ids:
                return _literal_names(iterable, ids.index(name))
    return None


def code_reads(files: list[Path] | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """Variable name -> where the package reads it; and the reads nobody can name."""
    reads: dict[str, list[str]] = {}
    unresolved: list[str] = []
    for path in files or sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = _parents(tree)
        constants = {
            target.id: node.value.value
            for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for target in node.targets if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            argument = _read_name_argument(node)
            if argument is None:
                continue
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            functions = _enclosing_functions(node, parents)
            names: set[str] | None = None
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                names = {argument.value}
            elif isinstance(argument, ast.Name):
                if argument.id in constants:
                    names = {constants[argument.id]}
                else:
                    names = _loop_names(argument.id, functions[0] if functions else tree)
            if names is None:
                if not any((path.name, getattr(f, "name", "")) in DYNAMIC_READS
                           for f in functions):
                    unresolved.append(f"{where} ({ast.unparse(argument)})")
                continue
            for name in names:
                reads.setdefault(name, []).append(where)
    return reads, unresolved


# ------------------------------------------------------------------ the artifacts


def _yaml_strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _yaml_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _yaml_strings(item)
    elif isinstance(value, str):
        yield value


def dockerfile_names() -> set[str]:
    names = set()
    for stage in dockerfile_stages():
        for command in stage:
            if command.cmd.upper() in ("ENV", "ARG"):
                pairs = list(command.value)
                keys = pairs[::2] if command.cmd.upper() == "ENV" else [
                    p.split("=", 1)[0] for p in pairs]
                names.update(keys)
    text = DOCKERFILE.read_text()
    names.update(_DOLLAR.findall(text))
    return names


def compose_names() -> set[str]:
    raw = yaml.safe_load(COMPOSE.read_text())
    names = compose_variables(COMPOSE.read_text())
    for service in raw["services"].values():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        names.update(environment)
        for value in _yaml_strings(service):
            names.update(compose_variables(value))
    return names


def roster_names() -> set[str]:
    names = set()
    for roster in sorted((REPO / "config" / "docker").glob("*.yaml")):
        names.update(compose_variables(roster.read_text()))
    return names


def systemd_names() -> set[str]:
    names = set()
    for path in sorted(SYSTEMD.iterdir()):
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("Environment="):
                names.add(line.removeprefix("Environment=").split("=", 1)[0])
            names.update(_DOLLAR.findall(line))
            match = re.match(r"#?([A-Z][A-Z0-9_]*)=", line)
            if match and path.name.endswith(".env.example"):  # commented-out ones count too
                names.add(match[1])
    return names


def kubernetes_names() -> set[str]:
    names = set()
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document:
                continue
            for value in _yaml_strings(document.get("data", {})):
                names.update(compose_variables(value))  # `${VAR}` in the roster
            spec = document.get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                names.update(item["name"] for item in container.get("env", []))
    return names


def readme_names() -> set[str]:
    text = (REPO / "README.md").read_text()
    names = set(_DOLLAR.findall(text))
    for span in re.findall(r"`([^`\n]+)`", text):
        names.update(n for n in _ENV_NAME.findall(span) if "_" in n)
    return names


ARTIFACTS = {
    "Dockerfile": dockerfile_names,
    "docker-compose.yaml": compose_names,
    "config/docker/*.yaml": roster_names,
    "systemd/*": systemd_names,
    "config/kubernetes/*.yaml": kubernetes_names,
    "README.md": readme_names,
}


# ------------------------------------------------------------------ the tests


def test_every_variable_the_code_reads_is_documented() -> None:
    """A variable multiwatch reads is listed in multiwatch.config.environment, with its meaning."""
    reads, unresolved = code_reads()
    assert not unresolved, f"environment reads whose variable cannot be named: {unresolved}"
    undocumented = {name: where for name, where in reads.items()
                    if name not in ENVIRONMENT_VARIABLES}
    assert not undocumented, f"read but not in ENVIRONMENT_VARIABLES: {undocumented}"
    assert {"INSTANCE_ID", "DATA_DIR", "RABBITMQ_HOST", "LOG_LEVEL"} <= set(reads)


def test_every_documented_variable_is_read_by_the_code() -> None:
    """Nothing in multiwatch.config.environment is a dead name that setting would not change."""
    reads, _ = code_reads()
    unread = set(ENVIRONMENT_VARIABLES) - set(reads)
    assert not unread, f"documented but read nowhere in multiwatch/: {sorted(unread)}"
    assert all(meaning.strip() for meaning in ENVIRONMENT_VARIABLES.values())


def test_deployment_artifacts_name_only_variables_multiwatch_reads() -> None:
    """Every variable in Dockerfile, compose, systemd, Kubernetes and README is a real one."""
    unknown = {}
    for artifact, names in ARTIFACTS.items():
        strangers = names() - set(ENVIRONMENT_VARIABLES) - set(NOT_MULTIWATCH)
        if strangers:
            unknown[artifact] = sorted(strangers)
    assert not unknown, (f"not read by multiwatch (add to multiwatch.config.environment or fix): "
                         f"{unknown}")


def test_the_allowlist_has_no_stale_entries() -> None:
    """Each name excused as not multiwatch's still appears in some artifact."""
    named = set().union(*(names() for names in ARTIFACTS.values()))
    assert set(NOT_MULTIWATCH) <= named, sorted(set(NOT_MULTIWATCH) - named)
    assert not set(NOT_MULTIWATCH) & set(ENVIRONMENT_VARIABLES)


def test_the_guide_contract_is_in_the_list() -> None:
    """The deployment guide's variables are all documented and used by the artifacts."""
    guide = {"INSTANCE_ID", "DATA_DIR", "RABBITMQ_HOST", "RABBITMQ_PORT", "RABBITMQ_USER",
             "RABBITMQ_PASS", "LOG_LEVEL"}
    assert guide <= set(ENVIRONMENT_VARIABLES)
    assert guide <= compose_names() | systemd_names()


def test_a_new_read_anywhere_in_the_package_would_be_caught(tmp_path: Path) -> None:
    """The scanner sees reads through literals, constants, loops and `os.getenv`."""
    module = tmp_path / "module.py"
    module.write_text(
        "import os\n"
        "NAME = 'FROM_CONSTANT'\n"
        "def f(environ, key):\n"
        "    environ.get('PLAIN'); os.environ['INDEXED']; os.getenv('GETENV')\n"
        "    env_node(environ, NAME)\n"
        "    for name in ('LOOP_A', 'LOOP_B'):\n"
        "        environ.get(name)\n"
        "    [environ.get(n) for n, _ in (('PAIR', 1),)]\n"
        "    return environ.get(key)\n"
    )
    reads, unresolved = code_reads([module])
    assert set(reads) == {"FROM_CONSTANT", "PLAIN", "INDEXED", "GETENV", "LOOP_A", "LOOP_B",
                          "PAIR"}
    assert unresolved == ["module.py:9 (key)"]
