"""Kubernetes manifests for a Tessera cluster: `python -m tessera.manifests > tessera.yaml`.

Per raft group G (tessera up's groups 0-3):

  * a headless Service `tessera-gG` with ports named `peer` and `api`: its DNS
    SRV records `_peer._tcp.tessera-gG.NAMESPACE.svc.CLUSTER_DOMAIN` are how the
    replicas and routers find the group (tessera/deploy.py). It publishes pods
    before they are ready, since a replica is ready (/health) only once its
    group has a leader, which needs the others found first;
  * a StatefulSet `tessera-gG` of three replicas with stable names and volumes:
    pod `tessera-gG-N` is member N+1. Its pods start together (Parallel), as
    a group's members found it together; they must land on different nodes and
    prefer different zones (anti-affinity), and are ready when /health says so;
  * a PodDisruptionBudget: at most one member of a group down by a drain, so a
    group of three keeps its quorum.

And the routers: a Deployment (spread over nodes) behind a Service on 2379,
etcd's client port, with its own PodDisruptionBudget. A router founds the
cluster from the SRV records of every group, once.

`deploy/kubernetes/tessera.yaml` is this module's output with its defaults;
tests/hosts/test_manifests.py checks that it is, and validates every object
against Kubernetes' schemas.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from tessera.launcher import GROUPS, MEMBERS
from tessera.deploy import API_PORT, CLIENT_PORT, METRICS_PORT, PEER_PORT

IMAGE = "tessera:0.1.0"
APP = "tessera"
DATA_PATH = "/var/lib/tessera"
CLUSTER_DOMAIN = "cluster.local"
ROUTERS = 2
STORAGE = "10Gi"
GROUP_LABEL = "tessera.io/group"
COMPONENT_LABEL = "app.kubernetes.io/component"


def _labels(component: str, group: int | None = None) -> dict:
    labels = {"app.kubernetes.io/name": APP, COMPONENT_LABEL: component}
    if group is not None:
        labels[GROUP_LABEL] = str(group)
    return labels


def _pod_environment() -> list[dict]:
    return [{"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
            for name, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"))]


def _discovery_domain(cluster_domain: str) -> str:
    return f"$(POD_NAMESPACE).svc.{cluster_domain}"


def _spread(labels: dict, required: bool) -> dict:
    """Pods with these labels on different nodes (required or preferred), and preferably zones."""
    selector = {"matchLabels": labels}
    by_node = {"labelSelector": selector, "topologyKey": "kubernetes.io/hostname"}
    by_zone = {"weight": 100, "podAffinityTerm": {"labelSelector": selector,
                                                  "topologyKey": "topology.kubernetes.io/zone"}}
    anti = {"preferredDuringSchedulingIgnoredDuringExecution": [by_zone]}
    if required:
        anti["requiredDuringSchedulingIgnoredDuringExecution"] = [by_node]
    else:
        anti["preferredDuringSchedulingIgnoredDuringExecution"].append({"weight": 50, "podAffinityTerm": by_node})
    return {"podAntiAffinity": anti}


def _health_probe(port: int) -> dict:
    return {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 5, "failureThreshold": 3}


def group_objects(group: int, image: str, members: int, storage: str, cluster_domain: str) -> list[dict]:
    name = f"{APP}-g{group}"
    labels = _labels("replica", group)
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": labels, "ports": [
            {"name": "peer", "port": PEER_PORT, "protocol": "TCP"},
            {"name": "api", "port": API_PORT, "protocol": "TCP"},
            {"name": "metrics", "port": METRICS_PORT, "protocol": "TCP"}]},
    }
    arguments = [
        "replica", "--discovery-srv", _discovery_domain(cluster_domain), "--discovery-size", str(members),
        "--group", str(group),
        "--advertise-peer", f"$(POD_NAME).{name}.$(POD_NAMESPACE).svc.{cluster_domain}:{PEER_PORT}",
        "--listen-peer", f"0.0.0.0:{PEER_PORT}", "--listen-api", f"0.0.0.0:{API_PORT}",
        "--metrics-listen", f"0.0.0.0:{METRICS_PORT}", "--data-dir", DATA_PATH,
    ]
    container = {
        "name": "replica", "image": image, "args": arguments, "env": _pod_environment(),
        "ports": [{"name": "peer", "containerPort": PEER_PORT}, {"name": "api", "containerPort": API_PORT},
                  {"name": "metrics", "containerPort": METRICS_PORT}],
        "readinessProbe": _health_probe(METRICS_PORT),
        # Alive while it serves at all: a replica without a leader (a partition) must not be restarted.
        "livenessProbe": {"tcpSocket": {"port": API_PORT}, "periodSeconds": 10, "failureThreshold": 6},
        "volumeMounts": [{"name": "data", "mountPath": DATA_PATH}],
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
    }
    statefulset = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "labels": labels},
        "spec": {
            "serviceName": name, "replicas": members, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "affinity": _spread(labels, required=True),
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
                "terminationGracePeriodSeconds": 30,
                "containers": [container]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}}}],
        },
    }
    budget = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, "labels": labels},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
    }
    return [service, statefulset, budget]


def router_objects(image: str, routers: int, members: int, cluster_domain: str) -> list[dict]:
    name = f"{APP}-router"
    labels = _labels("router")
    container = {
        # Its pod's own address in member list: clients that dial every member (etcdctl --cluster,
        # clientv3's endpoint sync) reach each router there, where 0.0.0.0 would reach none.
        "name": "router", "image": image,
        "env": _pod_environment() + [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "args": ["router", "--discovery-srv", _discovery_domain(cluster_domain), "--discovery-size", str(members),
                 "--listen", f"0.0.0.0:{CLIENT_PORT}", "--advertise-client", f"$(POD_IP):{CLIENT_PORT}",
                 "--name", "$(POD_NAME)"],
        "ports": [{"name": "client", "containerPort": CLIENT_PORT}],
        "readinessProbe": _health_probe(CLIENT_PORT),
        "livenessProbe": {"tcpSocket": {"port": CLIENT_PORT}, "periodSeconds": 10, "failureThreshold": 6},
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}},
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": routers, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "affinity": _spread(labels, required=False),
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                     "containers": [container]}}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": APP, "labels": labels},
        "spec": {"selector": labels, "ports": [
            {"name": "client", "port": CLIENT_PORT, "targetPort": "client", "protocol": "TCP"}]},
    }
    budget = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, "labels": labels},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
    }
    return [deployment, service, budget]


def render(image: str = IMAGE, members: int = len(MEMBERS), routers: int = ROUTERS, storage: str = STORAGE,
           cluster_domain: str = CLUSTER_DOMAIN) -> list[dict]:
    objects = []
    for group in GROUPS:
        objects += group_objects(group, image, members, storage, cluster_domain)
    return objects + router_objects(image, routers, members, cluster_domain)


class _Dumper(yaml.SafeDumper):
    """Every object written out in full: no YAML anchors where two share a dict (the labels)."""

    def ignore_aliases(self, data) -> bool:
        return True


def render_text(**options) -> str:
    header = "# Rendered by `python -m tessera.manifests` (tessera/manifests.py says what each object is for).\n"
    return header + yaml.dump_all(render(**options), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.manifests", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=IMAGE, help="the image deploy/Dockerfile builds (default %(default)s)")
    parser.add_argument("--members", type=int, default=len(MEMBERS), help="replicas per group (default %(default)s)")
    parser.add_argument("--routers", type=int, default=ROUTERS, help="router pods (default %(default)s)")
    parser.add_argument("--storage", default=STORAGE, help="each replica's volume (default %(default)s)")
    parser.add_argument("--cluster-domain", default=CLUSTER_DOMAIN, help="the cluster's DNS domain")
    args = parser.parse_args(argv)
    sys.stdout.write(render_text(image=args.image, members=args.members, routers=args.routers,
                                 storage=args.storage, cluster_domain=args.cluster_domain))
    return 0


if __name__ == "__main__":
    sys.exit(main())
