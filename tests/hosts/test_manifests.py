"""The orchestrators' files in deploy/: Kubernetes manifests, systemd units, the container image.

The manifests are rendered (tessera/manifests.py), compared with the committed
deploy/kubernetes/tessera.yaml, validated against Kubernetes' own schemas
(kubernetes-validate, strict: no unknown field), and checked for what the
schemas cannot see: names that must agree with each other and with what
tessera/deploy.py looks up in DNS, and containers' arguments that the
`tessera` command itself accepts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tessera import cli, deploy, manifests
from tessera.launcher import GROUPS, MEMBERS

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.30"  # a release still widely run; the fields used are older than it


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {item["metadata"]["name"]: item for item in objects if item["kind"] == kind}


def test_committed_manifests_are_the_rendered_ones():
    committed = (REPO / "deploy/kubernetes/tessera.yaml").read_text()
    assert committed == manifests.render_text(), "run: python -m tessera.manifests > deploy/kubernetes/tessera.yaml"


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, "1.37"])
def test_every_object_is_valid_for_kubernetes(version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="the test extra installs it")
    objects = list(yaml.safe_load_all((REPO / "deploy/kubernetes/tessera.yaml").read_text()))
    assert len(objects) == 3 * len(GROUPS) + 3
    for item in objects:
        kubernetes_validate.validate(item, version, strict=True)  # raises ValidationError, naming the field


def test_a_bad_object_is_refused_by_the_validator():
    """The validator catches what it should: a misspelt field, a string where a number goes."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="the test extra installs it")
    statefulset = by_kind(manifests.render(), "StatefulSet")["tessera-g1"]
    statefulset["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)
    statefulset = by_kind(manifests.render(), "StatefulSet")["tessera-g1"]
    statefulset["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


def expand(words: list[str], pod: str, namespace: str = "prod") -> list[str]:
    """Kubernetes' $(VAR) expansion of a container's arguments."""
    values = {"POD_NAME": pod, "POD_NAMESPACE": namespace, "POD_IP": "10.1.2.3"}
    return [re.sub(r"\$\((\w+)\)", lambda match: values[match.group(1)], word) for word in words]


def test_each_group_is_a_statefulset_found_through_its_headless_service():
    objects = manifests.render()
    services, statefulsets = by_kind(objects, "Service"), by_kind(objects, "StatefulSet")
    budgets = by_kind(objects, "PodDisruptionBudget")
    for group in GROUPS:
        name = f"tessera-g{group}"
        statefulset, service, budget = statefulsets[name], services[name], budgets[name]
        spec, pod = statefulset["spec"], statefulset["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert spec["serviceName"] == name and spec["replicas"] == len(MEMBERS)
        assert spec["selector"]["matchLabels"] == labels == service["spec"]["selector"]
        assert budget["spec"]["selector"]["matchLabels"] == labels and budget["spec"]["maxUnavailable"] == 1
        # Headless, publishing members before they are ready, with the ports deploy.py's SRV names use.
        assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
        ports = {port["name"]: port["port"] for port in service["spec"]["ports"]}
        assert f"_{next(iter(ports))}._tcp" == deploy.PEER_SERVICE and ports["peer"] == deploy.PEER_PORT
        assert "_api._tcp" == deploy.API_SERVICE and ports["api"] == deploy.API_PORT
        # Members on different nodes, by this group's labels.
        required = pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert required == [{"labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}]
        container = pod["spec"]["containers"][0]
        probe = container["readinessProbe"]["httpGet"]
        assert probe == {"path": "/health", "port": deploy.METRICS_PORT}
        # Pod tessera-gG-1 is what DNS names member 2, and the arguments are the command's own.
        args = cli.build_parser().parse_args(expand(container["args"], f"{name}-1"))
        assert args.run is cli.command_replica and args.group == group
        assert args.discovery_srv == "prod.svc.cluster.local" and args.discovery_size == len(MEMBERS)
        assert args.advertise_peer == f"{name}-1.{name}.prod.svc.cluster.local:{deploy.PEER_PORT}"
        assert args.data_dir == container["volumeMounts"][0]["mountPath"]
        assert args.metrics_listen.endswith(f":{deploy.METRICS_PORT}")


def test_routers_are_a_deployment_behind_a_service_on_etcds_port():
    objects = manifests.render()
    deployment = by_kind(objects, "Deployment")["tessera-router"]
    service = by_kind(objects, "Service")["tessera"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert service["spec"]["ports"][0]["port"] == deploy.CLIENT_PORT == 2379
    assert service["spec"]["ports"][0]["targetPort"] in {port["name"] for port in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": deploy.CLIENT_PORT}
    args = cli.build_parser().parse_args(expand(container["args"], "tessera-router-abc"))
    assert args.run is cli.command_router and args.name == "tessera-router-abc"  # unique per pod
    assert args.listen == f"0.0.0.0:{deploy.CLIENT_PORT}" and args.discovery_groups == GROUPS
    assert args.advertise_client == f"10.1.2.3:{deploy.CLIENT_PORT}"  # the pod's address, from its env


def test_systemd_units_verify(tmp_path):
    """systemd's own check of the units, with ExecStart pointed at this installation's `tessera`."""
    analyze, tessera = shutil.which("systemd-analyze"), shutil.which("tessera")
    if analyze is None or tessera is None:
        pytest.skip("needs systemd-analyze and the installed `tessera` command")
    units = []
    for unit in sorted((REPO / "deploy/systemd").glob("*.service")):
        text = unit.read_text()
        assert "ExecStart=/usr/local/bin/tessera " in text
        target = tmp_path / unit.name.replace("@.", "@1.")
        target.write_text(text.replace("/usr/local/bin/tessera", tessera))
        units.append(str(target))
    assert len(units) == 2
    done = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_image_holds_every_package_and_exposes_the_ports():
    dockerfile = (REPO / "deploy/Dockerfile").read_text()
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile, re.MULTILINE))
    assert copied == {name.rstrip("*") for name in packages["include"]}
    exposed = {int(port) for port in re.search(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE).group(1).split()}
    assert exposed == {deploy.CLIENT_PORT, deploy.PEER_PORT, deploy.API_PORT, deploy.METRICS_PORT}
    assert 'ENTRYPOINT ["tessera"]' in dockerfile
