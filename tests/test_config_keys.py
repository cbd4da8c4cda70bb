"""One declaration per roster key: the README, the loader and `check` all follow the declarations
in multiwatch/config/roster.py."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from multiwatch.config import (
    BrokerConfig,
    HttpConfig,
    InstanceConfig,
    SupervisorConfig,
    TlsConfig,
    keys,
    load_roster,
)
from multiwatch.config.ha import HaConfig
from multiwatch.config.source import Node, Source
from multiwatch.config.yaml_nodes import parse_yaml
from tests.test_config import config_error, write_roster

README = Path(__file__).resolve().parent.parent / "README.md"
# README section → the dataclass declaring its keys
SECTIONS: dict[str, type] = {
    "defaults": InstanceConfig, "supervisor": SupervisorConfig, "http": HttpConfig,
    "broker": BrokerConfig, "broker.tls": TlsConfig, "ha": HaConfig,
}
# Keys the README shows with an example value instead of their default (None: unset).
EXAMPLES = {"broker.url", "broker.password_file", "broker.tls", "broker.tls.ca_file",
            "broker.tls.cert_file", "broker.tls.key_file"}


def readme_roster() -> dict[str, Node]:
    """The top-level sections of the README's roster reference (the yaml block under
    "## The roster"), as nodes with their lines."""
    text = README.read_text()
    match = re.search(r"^## The roster\n\n```yaml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no yaml block under '## The roster'"
    root = parse_yaml(match.group(1), "README.md")
    assert root is not None and isinstance(root.value, dict)
    return root.value


def readme_values(section: str) -> dict[str, Any]:
    """Each key the README's `section` lists, read by the key's own coercer."""
    top, *nested = section.split(".")
    node = readme_roster()[top]
    for name in nested:
        node = node.value[name]
    assert isinstance(node.value, dict)
    coercers = keys.coercers(SECTIONS[section])
    src = Source("README.md", "/", {}, expand=True)
    return {name: coercers[name](src, child, f"{section}.{name}") if name in coercers else child
            for name, child in node.value.items()}


@pytest.mark.parametrize("section", SECTIONS)
def test_readme_lists_every_declared_key_with_its_default(section: str) -> None:
    """The README's roster reference shows each key of the section, no other, at its default."""
    declared = {spec.name: spec.default for spec in keys.declared(SECTIONS[section])
                if spec.default is not dataclasses.MISSING}
    shown = readme_values(section)
    assert sorted(shown) == sorted(declared), "README keys differ from roster.py's declarations"
    wrong = {name: (shown[name], default) for name, default in declared.items()
             if shown[name] != default and f"{section}.{name}" not in EXAMPLES}
    assert not wrong, f"README shows other values than the defaults (shown, default): {wrong}"


def test_readme_instances_show_the_required_keys() -> None:
    """Every instance in the README example has the keys without a default: id and directory."""
    required = [spec.name for spec in keys.declared(InstanceConfig)
                if spec.default is dataclasses.MISSING]
    assert required == ["id", "directory"]
    items = readme_roster()["instances"].value
    assert items and all(set(required) <= set(item.value) for item in items)


@pytest.mark.parametrize("config", list(SECTIONS.values()))
def test_every_key_has_a_one_line_doc(config: type) -> None:
    """Each declared key says in one line what it does."""
    for spec in keys.declared(config):
        assert keys.doc(spec).strip(), f"{config.__name__}.{spec.name} has no doc"
        assert "\n" not in keys.doc(spec)


def test_an_unknown_key_lists_exactly_the_declared_keys(tmp_path: Path) -> None:
    """A typo in an instance names the valid keys: the declared ones, in declaration order."""
    (tmp_path / "m").mkdir()
    path = write_roster(tmp_path, f"""
        state_dir: {tmp_path / 'state'}
        instances:
          - id: m
            directory: {tmp_path / 'm'}
            setle_seconds: 2
    """)
    names = ", ".join(spec.name for spec in keys.declared(InstanceConfig))
    assert config_error(path).endswith(f"(valid keys: {names})")


def test_check_prints_every_declared_key_at_its_default(tmp_path: Path) -> None:
    """`check`'s effective configuration shows each instance and supervisor key, defaults
    filled in, in declaration order."""
    from multiwatch.config import render_effective

    (tmp_path / "m").mkdir()
    path = write_roster(tmp_path, f"""
        state_dir: {tmp_path / 'state'}
        instances:
          - id: m
            directory: {tmp_path / 'm'}
    """)
    shown = yaml.safe_load(render_effective(load_roster(path, {})))
    instance = shown["instances"][0]
    assert list(instance) == [spec.name for spec in keys.declared(InstanceConfig)]
    assert list(shown["supervisor"]) == [spec.name for spec in keys.declared(SupervisorConfig)]
    for spec in keys.declared(InstanceConfig)[2:]:
        default = spec.default
        if dataclasses.is_dataclass(default):
            default = dataclasses.asdict(default)  # type: ignore[arg-type]
        expected = list(default) if isinstance(default, tuple) else default
        assert instance[spec.name] == expected, spec.name
