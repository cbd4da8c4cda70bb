"""config/prometheus/multiwatch-alerts.yaml: valid rules (`promtool check rules`), every alert
fires on a series showing its trouble and stays quiet on a healthy one (`promtool test rules`
on tests/deploy/alert_rules_test.yaml), over metrics /metrics really exports, each with its
runbook line in the README.

promtool comes from Debian's `prometheus` package: `make test` (deploy-deps) installs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from multiwatch.supervisor.metrics import metric_names
from tests.deploy.artifacts import REPO

RULES = REPO / "config" / "prometheus" / "multiwatch-alerts.yaml"
RULE_TESTS = Path(__file__).with_name("alert_rules_test.yaml")
README = REPO / "README.md"
SEVERITIES = {"critical", "warning"}
# Labels the series carry: instance_id (and state, kind, le) from multiwatch, job and
# instance from the scrape.
KNOWN_LABELS = {"job", "instance", "instance_id", "state", "kind", "le", "severity"}


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    program = shutil.which("promtool")
    if program is None:
        pytest.fail("promtool is missing: run `make deploy-deps` as root "
                    "(apt-get install prometheus)")
    return subprocess.run([program, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in alerts()]


def rule_tests() -> list[dict[str, Any]]:
    return yaml.safe_load(RULE_TESTS.read_text())["tests"]  # type: ignore[no-any-return]


def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` passes: the expressions parse and every rule is well formed."""
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_every_alert_fires_on_its_trouble_and_not_when_healthy() -> None:
    """`promtool test rules` passes, with a series making each alert fire (labels and
    rendered annotations compared) and healthy series that keep several quiet."""
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    checks = [check for test in rule_tests() for check in test["alert_rule_test"]]
    fired = {check["alertname"] for check in checks if check.get("exp_alerts")}
    assert fired == set(alert_names())
    quiet = {check["alertname"] for check in checks if not check.get("exp_alerts")}
    assert len(quiet) >= 8, quiet


def test_the_rule_tests_would_catch_a_wrong_threshold(tmp_path: Path) -> None:
    """With one threshold raised (held deletions: 0 -> 5000), `promtool test rules` fails
    on that alert: the tests above check what the rules say."""
    broken = RULES.read_text().replace("multiwatch_deletions_held > 0",
                                       "multiwatch_deletions_held > 5000")
    assert broken != RULES.read_text()
    (tmp_path / "rules.yaml").write_text(broken)
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = ["rules.yaml"]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "alertname: MultiwatchDeletionsHeld" in result.stdout + result.stderr


@pytest.mark.parametrize("rule", alerts(), ids=alert_names())
def test_each_alert_has_severity_summary_description_and_runbook(rule: dict[str, Any]) -> None:
    """A severity label, a `for:`, a summary, a description and a runbook_url pointing at
    the alert's line in the README."""
    assert rule["labels"]["severity"] in SEVERITIES
    assert re.fullmatch(r"\d+[smh]", rule["for"])
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert annotations["runbook_url"] == f"README.md#{rule['alert'].lower()}"


def readme_runbook() -> dict[str, str]:
    """Anchor -> runbook line, from the README's "Alerting" section."""
    text = README.read_text()
    section = text.split("\n### Alerting\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(0)
            for m in re.finditer(r'^\| <a id="([a-z]+)"></a>`(\w+)` \|.*$', section, re.M)}


def test_the_readme_runbook_has_a_line_for_every_alert() -> None:
    """README's Alerting table has one row per alert, under the anchor its runbook_url
    names, saying what it means and what to do first; and no row for an alert that is gone."""
    runbook = readme_runbook()
    assert set(runbook) == {name.lower() for name in alert_names()}
    for name in alert_names():
        cells = [c.strip() for c in runbook[name.lower()].strip("|").split("|")]
        assert cells[0].endswith(f"`{name}`")
        assert len(cells) == 3 and all(len(c) > 20 for c in cells[1:]), cells


def referenced_metrics() -> set[str]:
    """multiwatch_* names in expressions and in the annotations' queries, histogram series
    folded into their family."""
    text = " ".join(rule["expr"] + " " + rule["annotations"]["description"]
                    for rule in alerts())
    return {re.sub(r"_(bucket|sum|count)$", "", name)
            for name in re.findall(r"\bmultiwatch_[a-z_]+", text)}


def test_rules_use_only_metrics_multiwatch_exports() -> None:
    """Every metric a rule reads is one supervisor/metrics.py exposes (a renamed metric
    would leave an alert that can never fire)."""
    assert referenced_metrics() <= set(metric_names()), \
        referenced_metrics() - set(metric_names())
    assert {"multiwatch_instance_unmounted", "multiwatch_deletions_held",
            "multiwatch_unusual_activity", "multiwatch_activity_window_events"} \
        <= referenced_metrics()


def test_rules_use_only_labels_the_series_carry() -> None:
    """Label names in selectors, by() and on() are multiwatch's (instance_id, state, kind,
    le) or the scrape's (job, instance): not the roster's "id" or a made-up "instance_name"."""
    used: set[str] = set()
    for rule in alerts():
        text = rule["expr"] + rule["annotations"]["description"]
        for group in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", text):
            used |= {label.strip() for label in group.split(",") if label.strip()}
        used |= set(re.findall(r"[{,]\s*([a-z_]+)\s*(?:=~|!=|!~|=)", text))
        used |= set(re.findall(r"\$labels\.([a-z_]+)", text))
    assert used <= KNOWN_LABELS, used - KNOWN_LABELS
    assert "instance_id" in used


SCRAPE_LABELS = {"job": "multiwatch", "instance": "host:9120"}
# One trouble per instance, as the supervisor's view shows it, and the alerts it must raise
# (with nothing else firing: the healthy instance and the supervisor stay quiet).
TROUBLED_FLEET: dict[str, tuple[dict[str, Any], set[str]]] = {
    "healthy": ({}, set()),
    "fatal": ({"state": "FATAL"}, {"MultiwatchInstanceFatal"}),
    "waiting": ({"state": "WAITING"}, {"MultiwatchInstanceDown"}),
    "unmounted": ({"state": "WAITING", "heartbeat": {"unmounted": True}},
                  {"MultiwatchDirectoryUnmounted"}),
    "held": ({"heartbeat": {"deletions_held": 1000}}, {"MultiwatchDeletionsHeld"}),
    "unusual": ({"heartbeat": {"unusual_activity": {
        "enabled": True, "active": True, "since": 1.0, "window_seconds": 300.0,
        "events": {"deleted": 0, "modified": 900, "moved": 900}, "files_tracked": 1000,
        "percent": 180.0, "threshold_percent": 20.0, "min_events": 100}}},
        {"MultiwatchUnusualActivity"}),
    "offline": ({"heartbeat": {"broker_connected": False}}, {"MultiwatchBrokerDisconnected"}),
    "full": ({"heartbeat": {"outbox_full": True, "publish_held": True}},
             {"MultiwatchOutboxFull", "MultiwatchPublishHeld"}),
    "stale": ({"heartbeat_age_seconds": 45.0}, {"MultiwatchHeartbeatStale"}),
}


def _scrape_of_troubled_fleet() -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    from multiwatch.supervisor.metrics import metrics_registry, render_metrics
    from tests.support.fleet_view import fleet, heartbeat, instance

    entries = {}
    for ident, (changes, _) in TROUBLED_FLEET.items():
        changes = dict(changes)
        beat = heartbeat(**changes.pop("heartbeat", {}))
        entries[ident] = instance(heartbeat=beat, **changes)
    view = fleet(entries)
    text = render_metrics(metrics_registry(lambda: view)).decode()
    return [(s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def test_a_scrape_of_a_troubled_fleet_fires_exactly_its_alerts(tmp_path: Path) -> None:
    """/metrics as multiwatch renders it for a fleet with one trouble per instance (FATAL,
    WAITING, unmounted, deletions held, unusual activity, broker down, outbox full and held,
    stale heartbeat), scraped for 15 minutes: each instance raises its alerts, and nothing
    else fires (the names, labels and values the rules expect are the ones exported)."""
    series = [{"series": "{}{{{}}}".format(name, ",".join(
                  f'{key}="{value}"' for key, value in {**labels, **SCRAPE_LABELS}.items())),
               "values": f"{value:g}x15"}
              for name, labels, value in _scrape_of_troubled_fleet()]
    series.append({"series": 'up{job="multiwatch",instance="host:9120"}', "values": "1x15"})
    expected = [{"labels": "ALERTS{{{}}}".format(",".join(
                    f'{key}="{value}"' for key, value in sorted({
                        "alertname": alert, "alertstate": "firing", "instance_id": ident,
                        "severity": _severity(alert), **SCRAPE_LABELS,
                        **({"state": "FATAL"} if alert == "MultiwatchInstanceFatal" else {}),
                    }.items()))), "value": 1}
                for ident, (_, alerts) in TROUBLED_FLEET.items() for alert in sorted(alerts)]
    tests = {"rule_files": [str(RULES)], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [
                 {"expr": 'ALERTS{alertstate="firing"}', "eval_time": "12m",
                  "exp_samples": expected}]}]}
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "fleet.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _severity(alert: str) -> str:
    (rule,) = [rule for rule in alerts() if rule["alert"] == alert]
    return str(rule["labels"]["severity"])
