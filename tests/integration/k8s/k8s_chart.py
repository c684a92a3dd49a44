"""Rendering the Kiln chart offline (helm-python-sdk) and pulling containers out of it.

Shared by the chart tests; no cluster, no helm binary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "k8s" / "helm" / "kiln"
EXAMPLES = REPO / "k8s" / "examples"
KUBE_VERSION = "1.30.0"
RELEASE = "demo"
NAMESPACE = "kiln"

# The objects a cluster validates only once a controller installs their CRD.
CRD_KINDS = {("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
             ("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "ServiceMonitor")}


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


def value_sets() -> dict[str, dict]:
    """The value sets the tests render: the defaults and every example under k8s/examples."""
    return {"default": {}, "external-s3": example("external-s3"),
            "tls-token": example("tls-token"), "multi-node-lws": example("multi-node"),
            "gpu-pods": example("gpu"), "two-models": example("two-models"),
            "batch-build": example("batch-build"), "observability": example("observability"),
            "metrics-off": {**example("two-models"), "metrics": {"enabled": False, "port": 9400}}}


def render(values: dict | None = None) -> list[dict]:
    """The manifests `helm template` would print for `values`, as parsed objects."""
    import helm_python as helm
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    objects = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@dataclass(frozen=True)
class RenderedContainer:
    """One container's command line and ports, with where it came from."""

    owner: str          # "<Kind>/<name>/<role>"
    args: list[str]
    ports: list[int]
    probes: dict        # probe name -> probe object


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(role, pod spec) for every pod template an object carries."""
    kind = obj["kind"]
    if kind in ("Deployment", "StatefulSet", "Job"):
        return [("pod", obj["spec"]["template"]["spec"])]
    if kind == "LeaderWorkerSet":
        lwt = obj["spec"]["leaderWorkerTemplate"]
        return [("leader", lwt["leaderTemplate"]["spec"]), ("worker", lwt["workerTemplate"]["spec"])]
    return []


def containers(objects: list[dict]) -> list[RenderedContainer]:
    found = []
    for obj in objects:
        for role, spec in pod_templates(obj):
            for c in spec.get("containers", []):
                found.append(RenderedContainer(
                    owner=f"{obj['kind']}/{obj['metadata']['name']}/{role}",
                    args=[str(a) for a in c.get("command", []) + c.get("args", [])],
                    ports=[p["containerPort"] for p in c.get("ports", [])],
                    probes={k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")
                            if k in c}))
    return found
