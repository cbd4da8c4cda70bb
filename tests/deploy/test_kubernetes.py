"""config/kubernetes/: the manifests validate against the Kubernetes API schemas (strictly:
unknown fields are errors), run multiwatch locked down, and configure something `multiwatch
check` accepts.

The schemas are those of `kubernetes-validate` (the API's OpenAPI definitions, per release).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from multiwatch.config import SupervisorConfig
from tests.deploy.artifacts import (
    KUBERNETES,
    ROSTER_PATH,
    STATE_DIR,
    checked_ha,
    checked_instances,
    dockerfile_stages,
    image_env,
    multiwatch_check,
)

MANIFESTS = ("multiwatch.yaml", "per-directory.yaml")
SECRET_VALUES = {"username": "multiwatch", "password": "from-the-secret"}


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((KUBERNETES / name).read_text()) if d]


def deployments(name: str) -> list[dict[str, Any]]:
    """The workloads that run multiwatch (StatefulSets: each replica its own state claim)."""
    return [d for d in documents(name) if d["kind"] in ("Deployment", "StatefulSet")]


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment: the image's ENV, then `env` (Secret keys filled in)."""
    env = image_env()
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = SECRET_VALUES[item["valueFrom"]["secretKeyRef"]["key"]]
    return env


def mounted_secrets(deployment: dict[str, Any]) -> dict[str, str]:
    """Secret file -> content, as the kubelet mounts the deployment's secret volumes."""
    files = {}
    for path, (_mount, volume) in mounts(deployment).items():
        for item in volume.get("secret", {}).get("items", []):
            files[f"{path}/{item['path']}"] = SECRET_VALUES[item["key"]]
    return files


def mounts(deployment: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mountPath -> (volumeMount, volume) of the deployment's one container; a claim
    template's volume is {"persistentVolumeClaim": {"claimName": <template name>}}."""
    volumes = {v["name"]: v for v in pod(deployment)["volumes"]}
    for template in deployment["spec"].get("volumeClaimTemplates", []):
        name = template["metadata"]["name"]
        volumes[name] = {"name": name, "persistentVolumeClaim": {"claimName": name}}
    (container,) = pod(deployment)["containers"]
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container["volumeMounts"]}


def all_deployments() -> list[Any]:
    return [pytest.param(name, d, id=d["metadata"]["name"])
            for name in MANIFESTS for d in deployments(name)]


def ids(deployment: dict[str, Any]) -> str:
    return str(deployment["metadata"]["name"])


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_validate_against_the_kubernetes_api(name: str) -> None:
    """Every document is a valid object of the current Kubernetes API, no unknown fields."""
    version = kubernetes_validate.latest_version()
    for document in documents(name):
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validation_would_catch_a_typo() -> None:
    """A misspelt securityContext field is rejected, so the check above means something."""
    (deployment,) = deployments("multiwatch.yaml")
    context = pod(deployment)["containers"][0]["securityContext"]
    context["readOnlyRootFilesytem"] = context.pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFilesytem"):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize(("manifest", "deployment"), all_deployments())
def test_pods_run_as_the_images_non_root_user_read_only(
    manifest: str, deployment: dict[str, Any]
) -> None:
    """Non-root (the image's uid), read-only root, no privilege escalation, no capabilities."""
    spec = pod(deployment)
    user = next(c.value[0] for c in dockerfile_stages()[-1] if c.cmd.upper() == "USER")
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert f"{spec['securityContext']['runAsUser']}:{spec['securityContext']['runAsGroup']}" \
        == user
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert set(container["resources"]) == {"requests", "limits"}
    assert spec["terminationGracePeriodSeconds"] > SupervisorConfig().stop_timeout_seconds


@pytest.mark.parametrize(("manifest", "deployment"), all_deployments())
def test_watched_trees_are_read_only_and_state_persists(
    manifest: str, deployment: dict[str, Any]
) -> None:
    """/data mounts are read-only; the state survives the pod (a claim of each replica's
    own); /tmp is scratch."""
    by_path = mounts(deployment)
    data = [path for path in by_path if path.startswith("/data/")]
    assert data and all(by_path[path][0]["readOnly"] is True for path in data)
    assert "persistentVolumeClaim" in by_path[STATE_DIR][1]
    assert not by_path[STATE_DIR][0].get("readOnly")
    assert "emptyDir" in by_path["/tmp"][1]
    claims = {t["metadata"]["name"] for t in deployment["spec"]["volumeClaimTemplates"]}
    assert by_path[STATE_DIR][1]["persistentVolumeClaim"]["claimName"] in claims
    assert not [d for d in documents(manifest) if d["kind"] == "PersistentVolumeClaim"], \
        "one claim shared by two replicas (ReadWriteOnce: not across nodes)"


@pytest.mark.parametrize(("manifest", "deployment"), all_deployments())
def test_two_replicas_come_with_ha_and_roll_out_one_at_a_time(
    manifest: str, deployment: dict[str, Any], tmp_path: Path
) -> None:
    """replicas: 2 only with ha enabled for every instance the pod runs (else both would
    announce every file); a rollout replaces one pod at a time and waits until it is ready,
    and the replicas prefer two nodes."""
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert deployment["kind"] == "StatefulSet"
    assert spec.get("updateStrategy", {"type": "RollingUpdate"})["type"] == "RollingUpdate"
    assert spec["podManagementPolicy"] == "Parallel"
    (term,) = pod(deployment)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == \
        spec["selector"]["matchLabels"]
    (container,) = pod(deployment)["containers"]
    env = container_env(container)
    roster = None
    if "MULTIWATCH_CONFIG" in env:
        (configmap,) = [d for d in documents(manifest) if d["kind"] == "ConfigMap"]
        roster = configmap["data"][Path(ROSTER_PATH).name]
    else:
        assert env["MULTIWATCH_HA"] == "1"
    result = multiwatch_check(roster, env, tmp_path, mounted_secrets(deployment))
    assert result.returncode == 0, result.stderr
    ha = checked_ha(result)
    assert ha and all(ha.values()), ha


def test_roster_deployment_probes_http_and_reads_the_configmap(tmp_path: Path) -> None:
    """The ConfigMap roster passes `multiwatch check`, listens where the probes look, and
    watches exactly the read-only mounts."""
    (deployment,) = deployments("multiwatch.yaml")
    (container,) = pod(deployment)["containers"]
    env = container_env(container)
    assert env["MULTIWATCH_CONFIG"] == ROSTER_PATH
    mount, volume = mounts(deployment)[str(Path(ROSTER_PATH).parent)]
    assert mount["readOnly"] is True
    (configmap,) = [d for d in documents("multiwatch.yaml") if d["kind"] == "ConfigMap"
                    and d["metadata"]["name"] == volume["configMap"]["name"]]
    roster = configmap["data"][Path(ROSTER_PATH).name]
    assert yaml.safe_load(roster)["http"]["listen"] == "0.0.0.0:9120"
    assert container["ports"] == [{"name": "http", "containerPort": 9120}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert all(item.get("valueFrom", {}).get("secretKeyRef") for item in container["env"]
               if item["name"] == "RABBITMQ_USER")

    result = multiwatch_check(roster, env, tmp_path, mounted_secrets(deployment))
    assert result.returncode == 0, result.stderr
    assert "from-the-secret" not in result.stdout
    assert "url: amqp://multiwatch@rabbitmq:5672/" in result.stdout
    assert f"password_file: {tmp_path}{env['RABBITMQ_PASS_FILE']}\n" in result.stdout
    watched = {d.replace(str(tmp_path), "") for d in checked_instances(result).values()}
    assert watched == {path for path in mounts(deployment) if path.startswith("/data/")}


@pytest.mark.parametrize("deployment", deployments("per-directory.yaml"), ids=ids)
def test_per_directory_deployments_keep_the_guide_and_pass_check(
    deployment: dict[str, Any], tmp_path: Path
) -> None:
    """The guide's one Deployment per directory: its names, its variables, exec health probes,
    and an environment `multiwatch check` accepts."""
    name = deployment["metadata"]["name"]
    directory = name.removeprefix("file-watcher-")
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app": "file-watcher", "instance": directory}
    (container,) = pod(deployment)["containers"]
    assert container["name"] == "file-watcher"
    assert container["image"].startswith("multiwatch:")
    assert container["readinessProbe"]["exec"]["command"] == ["multiwatch", "health"]
    assert container["livenessProbe"]["exec"]["command"] == ["multiwatch", "health", "--live"]
    env = container_env(container)
    assert env["INSTANCE_ID"] == f"watcher-{directory}"
    assert env["DATA_DIR"] == f"/data/{directory}"
    assert env["RABBITMQ_HOST"] == "rabbitmq-service"
    assert "MULTIWATCH_CONFIG" not in env

    result = multiwatch_check(None, env, tmp_path, mounted_secrets(deployment))
    assert result.returncode == 0, result.stderr
    assert list(checked_instances(result)) == [f"watcher-{directory}"]
    assert "amqp://multiwatch:****@rabbitmq-service:5672/%2F" in result.stdout
    assert f"password_file: {tmp_path}{env['RABBITMQ_PASS_FILE']}\n" in result.stdout


@pytest.mark.parametrize(("manifest", "deployment"), all_deployments())
def test_pods_get_the_password_as_a_file_and_no_api_token(
    manifest: str, deployment: dict[str, Any]
) -> None:
    """No service-account token is mounted; the password is a read-only Secret file named by
    RABBITMQ_PASS_FILE, readable by the pod's group only, and in no variable or URL."""
    spec = pod(deployment)
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    names = {item["name"] for item in container["env"]}
    assert "RABBITMQ_PASS" not in names
    env = container_env(container)
    secret_files = mounted_secrets(deployment)
    assert list(secret_files) == [env["RABBITMQ_PASS_FILE"]]
    mount, volume = mounts(deployment)[str(Path(env["RABBITMQ_PASS_FILE"]).parent)]
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == "multiwatch-rabbitmq"
    assert volume["secret"]["defaultMode"] & 0o007 == 0  # nothing for "other"
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    for document in documents(manifest):
        for text in document.get("data", {}).values():
            assert not re.search(r"amqps?://[^@\s/]*:[^@\s]*@", text), "a password in a URL"


@pytest.mark.parametrize("name", MANIFESTS)
def test_the_header_says_which_rabbitmq_service_it_expects(name: str) -> None:
    """Each manifest's header names the Service its broker host is (and how to point
    elsewhere), instead of silently assuming one in the namespace."""
    text = (KUBERNETES / name).read_text()
    hosts = set(re.findall(r"amqp://[^@\s]*@([A-Za-z0-9.-]+)", text))
    for deployment in deployments(name):
        for container in pod(deployment)["containers"]:
            if host := container_env(container).get("RABBITMQ_HOST"):
                hosts.add(host)
    assert hosts
    header = text.split("\n---")[0]
    for host in hosts:
        assert f"Service `{host}`" in header, host
    assert "svc.cluster.local" in header  # the spelling for a broker in another namespace


def network_policies(name: str) -> list[dict[str, Any]]:
    return [d for d in documents(name) if d["kind"] == "NetworkPolicy"]


def selects(policy: dict[str, Any], deployment: dict[str, Any]) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"].items()
    return wanted <= deployment["spec"]["template"]["metadata"]["labels"].items()


def _peer_matches(peer: dict[str, Any], namespace: str) -> bool:
    """A from/to entry that selects namespaces by name (the only kind these policies use)."""
    assert set(peer) == {"namespaceSelector"}, peer
    labels = {"kubernetes.io/metadata.name": namespace}
    return peer["namespaceSelector"]["matchLabels"].items() <= labels.items()


def allows(policy: dict[str, Any], direction: str, protocol: str, port: int,
           namespace: str = "anywhere") -> bool:
    """Whether `policy` lets a connection through, as a network plugin reads it: some rule
    whose peers (none listed: any) and ports (none listed: any) both match."""
    spec = policy["spec"]
    peers_key = "from" if direction == "ingress" else "to"
    for rule in spec.get(direction, []):
        peers = rule.get(peers_key) or []
        ports = rule.get("ports") or []
        if peers and not any(_peer_matches(peer, namespace) for peer in peers):
            continue
        if not ports or any(p.get("protocol", "TCP") == protocol and p["port"] == port
                            for p in ports):
            return True
    return False


@pytest.mark.parametrize(("manifest", "deployment"), all_deployments())
def test_each_pod_is_fenced_by_a_network_policy(manifest: str, deployment: dict[str, Any]) -> None:
    """Exactly one NetworkPolicy of the manifest selects the pod, for both directions."""
    (policy,) = [p for p in network_policies(manifest) if selects(p, deployment)]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_pods_may_reach_only_rabbitmq_and_dns(manifest: str) -> None:
    """Egress: AMQP 5672 and AMQPS 5671 over TCP, DNS 53 over UDP and TCP; nothing else
    (the web, the RabbitMQ management port, the Kubernetes API)."""
    (policy,) = network_policies(manifest)
    for protocol, port in [("TCP", 5672), ("TCP", 5671), ("UDP", 53), ("TCP", 53)]:
        assert allows(policy, "egress", protocol, port), (protocol, port)
    for protocol, port in [("TCP", 443), ("TCP", 80), ("TCP", 15672), ("TCP", 6443),
                           ("UDP", 5672), ("TCP", 9120)]:
        assert not allows(policy, "egress", protocol, port), (protocol, port)


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_only_the_monitoring_namespace_may_reach_the_http_port(manifest: str) -> None:
    """Ingress: TCP 9120 (the port http.listen and the probes use) from the namespace
    `monitoring` alone; no other port, no other namespace; the comment says how to change it."""
    (policy,) = network_policies(manifest)
    assert allows(policy, "ingress", "TCP", 9120, namespace="monitoring")
    assert not allows(policy, "ingress", "TCP", 9120, namespace="default")
    assert not allows(policy, "ingress", "TCP", 9120, namespace="monitoring-other")
    assert not allows(policy, "ingress", "TCP", 5672, namespace="monitoring")
    assert not allows(policy, "ingress", "TCP", 22, namespace="monitoring")
    text = (KUBERNETES / manifest).read_text()
    comment = text[text.rindex("\n---\n"):text.index("kind: NetworkPolicy")]
    assert "change `monitoring`" in comment and "kubernetes.io/metadata.name" in comment


def test_the_policy_port_is_the_one_multiwatch_listens_on() -> None:
    """The roster Deployment's http port (9120) is the one its policy opens."""
    (deployment,) = deployments("multiwatch.yaml")
    (container,) = pod(deployment)["containers"]
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    (policy,) = network_policies("multiwatch.yaml")
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [port]


def test_the_validation_would_catch_a_policy_typo() -> None:
    """A misspelt NetworkPolicy field is rejected: the policies are checked like the rest."""
    (policy,) = network_policies("multiwatch.yaml")
    policy["spec"]["policyType"] = policy["spec"].pop("policyTypes")
    with pytest.raises(kubernetes_validate.ValidationError, match="policyType"):
        kubernetes_validate.validate(policy, kubernetes_validate.latest_version(), strict=True)
