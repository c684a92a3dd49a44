"""The Kiln chart rendered offline for each value set: lint, strict schema validation of every
built-in object, the LeaderWorkerSet's shape, and values the schema or the templates refuse."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from k8s_chart import (CHART, CRD_KINDS, KUBE_VERSION, by_kind, containers,
                       pod_templates, render, value_sets)
from k8s_crds import VENDORED, crd_errors

pytest.importorskip("helm_python", reason="pip install helm-python-sdk (requirements.txt)")
pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
import helm_python as helm  # noqa: E402

VALUE_SETS = value_sets()
BUILTIN_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job",
                 "StatefulSet", "Secret", "ServiceAccount", "ConfigMap"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(values) for name, values in VALUE_SETS.items()}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_chart_lints_without_warnings(value_set):
    report = helm.lint(CHART, VALUE_SETS[value_set], strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_builtin_object_validates_strictly(value_set, rendered, tmp_path):
    objects = rendered[value_set]
    assert {o["kind"] for o in objects} <= BUILTIN_KINDS | {kind for _, kind in CRD_KINDS}
    builtin = [o for o in objects if (o["apiVersion"], o["kind"]) not in CRD_KINDS]
    # KEDA and Prometheus Operator objects: strictly against their CRDs' vendored schemas.
    custom = [o for o in objects if (o["apiVersion"], o["kind"]) in VENDORED]
    assert [e for o in custom for e in crd_errors(o)] == []
    # The LeaderWorkerSet's pod templates are core PodTemplateSpecs: validate them as Pods.
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            for role, spec in pod_templates(obj):
                builtin.append({"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": f"{obj['metadata']['name']}-{role}"},
                                "spec": spec})
    manifest = tmp_path / f"{value_set}.yaml"
    manifest.write_text(yaml.safe_dump_all(builtin))
    done = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k",
                           KUBE_VERSION, "--quiet", str(manifest)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_strict_validation_catches_an_unknown_field(rendered, tmp_path):
    deployment = dict(by_kind(rendered["default"], "Deployment")["demo-kiln-builder"])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    done = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k",
                           KUBE_VERSION, "--quiet", str(manifest)], capture_output=True, text=True)
    assert done.returncode != 0 and "replica" in done.stdout + done.stderr


def test_default_values_render_builder_and_minio_only(rendered):
    objects = rendered["default"]
    assert set(by_kind(objects, "Deployment")) == {"demo-kiln-builder"}
    assert set(by_kind(objects, "StatefulSet")) == {"demo-kiln-minio"}
    claim = by_kind(objects, "StatefulSet")["demo-kiln-minio"]["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    hook = by_kind(objects, "Job")["demo-kiln-minio-bucket"]
    assert "post-install" in hook["metadata"]["annotations"]["helm.sh/hook"]


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _pod_containers(obj):
    return [c for _, spec in pod_templates(obj) for c in spec["containers"]]


def test_external_s3_reads_endpoint_and_keys_from_values_and_secret(rendered):
    objects = rendered["external-s3"]
    assert not by_kind(objects, "StatefulSet") and not by_kind(objects, "Secret")
    for obj in objects:
        for c in _pod_containers(obj):
            env = _env(c)
            assert env["KILN_S3_ENDPOINT"] == "s3.storage.internal:443"
            assert env["KILN_S3_SECURE"] == "1" and env["KILN_S3_REGION"] == "eu-west-1"
            assert env["KILN_S3_ACCESS_KEY"]["secretKeyRef"] == {"name": "kiln-s3",
                                                                 "key": "accessKey"}
            assert env["KILN_S3_CA_FILE"] == "/etc/kiln/s3-ca/ca.crt"
            assert any(m["mountPath"] == "/etc/kiln/s3-ca" for m in c["volumeMounts"])


def test_tls_and_token_mount_their_secrets_and_probe_with_grpcurl(rendered):
    objects = rendered["tls-token"]
    runtime = by_kind(objects, "Deployment")["demo-kiln-smollm2"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v["secret"]["secretName"] for v in runtime["volumes"] if "secret" in v}
    assert volumes == {"tls": "kiln-tls", "token": "kiln-token"}
    container = runtime["containers"][0]
    # The kubelet's grpc probe cannot do TLS: every probe is an exec of grpcurl.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in container[probe]
        assert "grpcurl" in container[probe]["exec"]["command"][-1]


@pytest.mark.parametrize("value_set", ["two-models", "gpu-pods", "multi-node-lws"])
def test_runtime_pods_probe_drain_and_run_locked_down(value_set, rendered):
    values = VALUE_SETS[value_set]
    for obj in rendered[value_set]:
        if obj["kind"] not in ("Deployment", "LeaderWorkerSet") or "builder" in obj["metadata"]["name"]:
            continue
        model = next(m for m in values["models"] if obj["metadata"]["name"].endswith(m["name"]))
        for role, spec in pod_templates(obj):
            (c,) = spec["containers"]
            args = c["args"]
            grace_s = int(args[args.index("--grace-s") + 1])
            prestop_s = int(c["lifecycle"]["preStop"]["exec"]["command"][1]) if role != "worker" else 0
            assert spec["terminationGracePeriodSeconds"] > prestop_s + grace_s
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            gpus = model.get("gpusPerPod", 0)
            assert c["resources"]["limits"].get("nvidia.com/gpu", 0) == gpus
            assert c["resources"]["requests"].get("nvidia.com/gpu", 0) == gpus
            assert args[args.index("--device") + 1] == ("cuda" if gpus else "cpu")
            if gpus:
                assert {"key": "nvidia.com/gpu", "operator": "Exists",
                        "effect": "NoSchedule"} in spec["tolerations"]
            if role == "worker":
                assert "readinessProbe" not in c and "ports" not in c
                continue
            startup = c["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
            assert c["readinessProbe"]["grpc"] == {"port": 50051, "service": "kiln.v1.Runtime"}
            liveness = c["livenessProbe"]
            assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace_s
            # Liveness watches the step loop (--step-stall-timeout-s), not the drain.
            assert liveness["grpc"] == {"port": 50051, "service": "kiln.v1.Runtime.Liveness"}
            assert args[args.index("--step-stall-timeout-s") + 1] == "60"
            assert args[args.index("--engine-core") + 1] == "process"


def test_each_model_gets_a_service_a_headless_service_an_hpa_and_a_pdb(rendered):
    objects = rendered["two-models"]
    services = by_kind(objects, "Service")
    deployments = by_kind(objects, "Deployment")
    for name in ("smollm2", "llama3-8b"):
        full = f"demo-kiln-{name}"
        pod_labels = deployments[full]["spec"]["template"]["metadata"]["labels"]
        for service in (services[full], services[f"{full}-headless"]):
            assert service["spec"]["selector"].items() <= pod_labels.items()
            assert service["spec"]["ports"][0]["targetPort"] == "grpc"
        assert services[f"{full}-headless"]["spec"]["clusterIP"] == "None"
        assert by_kind(objects, "PodDisruptionBudget")[full]["spec"]["selector"]["matchLabels"] \
            .items() <= pod_labels.items()
    hpa = by_kind(objects, "HorizontalPodAutoscaler")
    assert set(hpa) == {"demo-kiln-smollm2"}
    assert hpa["demo-kiln-smollm2"]["spec"]["scaleTargetRef"]["name"] in deployments
    assert "replicas" not in deployments["demo-kiln-smollm2"]["spec"]     # the HPA owns it
    assert deployments["demo-kiln-llama3-8b"]["spec"]["replicas"] == 1


def test_multi_node_model_is_a_leaderworkerset_whose_leader_is_rank_0(rendered):
    objects = rendered["multi-node-lws"]
    assert "demo-kiln-llama3-70b" not in by_kind(objects, "Deployment")
    lws = by_kind(objects, "LeaderWorkerSet")["demo-kiln-llama3-70b"]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    spec = lws["spec"]
    assert spec["replicas"] == 1 and spec["leaderWorkerTemplate"]["size"] == 2
    assert spec["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert spec["networkConfig"]["subdomainPolicy"] == "Shared"
    templates = spec["leaderWorkerTemplate"]
    leader = templates["leaderTemplate"]["spec"]["containers"][0]
    worker = templates["workerTemplate"]["spec"]["containers"][0]
    assert leader["args"] == worker["args"] and leader["args"][0] == "kiln-launch"
    for c in (leader, worker):
        env = _env(c)
        assert env["RANK"]["fieldRef"]["fieldPath"] == \
            "metadata.labels['leaderworkerset.sigs.k8s.io/worker-index']"
        assert env["WORLD_SIZE"] == "2" and env["LOCAL_WORLD_SIZE"] == "8"
        assert env["MASTER_ADDR"] == \
            "demo-kiln-llama3-70b-$(KILN_LWS_GROUP_INDEX).demo-kiln-llama3-70b.kiln"
        names = [e["name"] for e in c["env"]]
        assert names.index("KILN_LWS_GROUP_INDEX") < names.index("MASTER_ADDR")
    # Only the leader (rank 0) serves gRPC, so only it is probed and behind the Service.
    assert leader["ports"][0]["containerPort"] == 50051 and "startupProbe" in leader
    assert templates["leaderTemplate"]["metadata"]["labels"]["kiln.dev/role"] == "leader"
    service = by_kind(objects, "Service")["demo-kiln-llama3-70b"]
    assert service["spec"]["selector"]["kiln.dev/role"] == "leader"


def test_build_jobs_bound_retries_and_time(rendered):
    jobs = by_kind(rendered["batch-build"], "Job")
    local, remote = jobs["demo-kiln-build-smollm2"], jobs["demo-kiln-build-llama3-8b"]
    for job in (local, remote):
        assert job["spec"]["backoffLimit"] == 1
        assert job["spec"]["activeDeadlineSeconds"] == 7200
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        fail_fast = job["spec"]["podFailurePolicy"]["rules"][0]
        assert fail_fast["action"] == "FailJob"
        assert fail_fast["onExitCodes"]["values"] == [2, 3, 4]
        assert fail_fast["onExitCodes"]["containerName"] == \
            job["spec"]["template"]["spec"]["containers"][0]["name"]
    local_args = local["spec"]["template"]["spec"]["containers"][0]["args"]
    assert local_args[:4] == ["python", "-m", "builder_service", "build"]
    assert local_args[local_args.index("--store") + 1] == "s3://kiln/engines"
    remote_args = remote["spec"]["template"]["spec"]["containers"][0]["args"]
    assert remote_args[remote_args.index("--builder") + 1] == "demo-kiln-builder:50052"
    assert "--warm-startup-cache" not in local_args + remote_args
    warmed = jobs["demo-kiln-build-llama3-8b-fp8"]["spec"]["template"]["spec"]["containers"][0]
    assert "--warm-startup-cache" in warmed["args"] and "--store" in warmed["args"]
    assert warmed["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_a_build_job_passes_every_quantization_setting(rendered):
    """(test_chart_commands.py parses the same lines with the builder's real parser.)"""
    job = by_kind(rendered["batch-build"], "Job")["demo-kiln-build-llama3-8b-awq"]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = {flag: args[args.index(flag) + 1] for flag in (
        "--quant", "--group-size", "--kv-cache-quant-algo", "--calib-data", "--calib-num-samples",
        "--calib-seq-len", "--exclude-modules")}
    assert flags == {"--quant": "W4A16_AWQ", "--group-size": "64", "--kv-cache-quant-algo": "fp8",
                     "--calib-data": "s3://kiln-data/calibration/support-chats.jsonl",
                     "--calib-num-samples": "64", "--calib-seq-len": "512",
                     "--exclude-modules": "model.layers.0.*"}


def test_container_ports_match_their_listen_flags(rendered):
    for objects in rendered.values():
        for c in containers(objects):
            if "--listen" in c.args and c.ports:
                port = int(c.args[c.args.index("--listen") + 1].rsplit(":", 1)[1])
                assert port in c.ports, c.owner
                for probe in c.probes.values():
                    if "grpc" in probe:
                        assert probe["grpc"]["port"] == port, c.owner


def _model(**fields):
    return {"models": [{"name": "m", "engine": "s3://kiln/engines/m", **fields}]}


SCHEMA_REJECTS = {
    "negative replicas": _model(replicas=-1),
    "unknown scheduler policy": _model(scheduler={"policy": "FIFO"}),
    "missing engine URI": {"models": [{"name": "m"}]},
    "engine URI without scheme": _model(engine="engines/m"),
    "model name not a DNS label": _model(name="My_Model"),
    "KV fraction above 1": _model(kvCache={"freeGpuMemoryFraction": 1.5}),
    "unknown model field": _model(gpus=1),
    "CPU model over several nodes": _model(gpusPerPod=0, nodes=2, tp=2),
    "TLS without a Secret": {"tls": {"enabled": True}},
    "step stall timeout of zero": {"runtime": {"stepStallTimeoutSeconds": 0}},
    "an unknown engine core": {"runtime": {"engineCore": "fiber"}},
    "a relative kernel cache path": {"runtime": {"kernelCacheHostPath": "triton"}},
    "a kernel cache path that climbs": {"runtime": {"kernelCacheHostPath": "/var/../etc"}},
    "store that is not s3": {"store": {"uri": "http://minio:9000/kiln"}},
    "unknown autoscaling mode": _model(autoscaling={"enabled": True, "mode": "memory"}),
    "KV-use target above 1": _model(autoscaling={"keda": {"targetKvCacheUsage": 1.5}}),
    "unknown log format": {"logFormat": "xml"},
    "metrics port out of range": {"metrics": {"enabled": True, "port": 70000}},
    "OTLP endpoint without scheme": {"tracing": {"otlpEndpoint": "otel:4317"}},
    "negative build backoff": {"buildJob": {"backoffLimit": -1}},
    "build without a model": {"builds": [{"name": "b"}]},
    "an int4 group size Kiln has no kernels for": {"builds": [{"name": "b", "model": "/m",
                                                               "groupSize": 96}]},
    "an exclude_modules entry with a space": {"builds": [{"name": "b", "model": "/m",
                                                          "excludeModules": ["a b"]}]},
    "a KV cache dtype Kiln does not build": {"builds": [{"name": "b", "model": "/m",
                                                         "kvCacheQuantAlgo": "int4"}]},
    "warming without a GPU": {"builds": [{"name": "b", "model": "/m", "warmStartupCache": True}]},
    "warming through the builder": {"builds": [{"name": "b", "model": "/m", "gpus": 1,
                                                "viaBuilder": True, "warmStartupCache": True}]},
}
RENDER_REJECTS = {
    "tp * pp below the GPUs": (_model(gpusPerPod=4, tp=2), "tp * pp = 2 must equal"),
    "tp * pp above the GPUs": (_model(gpusPerPod=8, nodes=2, tp=8), "= 16"),
    "a model name used twice": ({"models": [{"name": "m", "engine": "/e"}] * 2}, "used twice"),
    "no store at all": ({"minio": {"enabled": False}}, "store.s3.endpoint is empty"),
    "liveness shorter than the drain": ({"runtime": {"drainSeconds": 120}}, "must exceed"),
    "KEDA without metrics": ({"metrics": {"enabled": False, "port": 9400},
                              **_model(autoscaling={"enabled": True, "mode": "keda"})},
                             "needs metrics.enabled"),
    "autoscaling min above max": (
        _model(autoscaling={"enabled": True, "minReplicas": 5, "maxReplicas": 2}), "exceeds"),
}


@pytest.mark.parametrize("case", SCHEMA_REJECTS)
def test_schema_rejects_bad_values(case):
    with pytest.raises(helm.HelmValuesError, match="schema"):
        render(SCHEMA_REJECTS[case])


@pytest.mark.parametrize("case", RENDER_REJECTS)
def test_cross_field_rules_fail_the_render_with_a_message(case):
    values, message = RENDER_REJECTS[case]
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(values)


def test_crd_validation_catches_an_unknown_field(rendered):
    scaled = by_kind(rendered["observability"], "ScaledObject")["demo-kiln-llama3-8b"]
    bad = {**scaled, "spec": {**scaled["spec"], "maxReplicas": 8}}
    assert any("maxReplicas" in e for e in crd_errors(bad))
    monitor = by_kind(rendered["observability"], "ServiceMonitor")["demo-kiln"]
    endpoint = {**monitor["spec"]["endpoints"][0], "intervall": "15s"}
    bad = {**monitor, "spec": {**monitor["spec"], "endpoints": [endpoint]}}
    assert any("intervall" in e for e in crd_errors(bad))


def _metric_names() -> set[str]:
    """Every series name the runtime and the builder export (histograms with their suffixes)."""
    from builder_service.metrics import BuilderMetrics
    from runtime_service.server.metrics import (EngineSnapshot, RuntimeMetrics,
                                                EngineStatsCollector)
    names = set()
    for registry in (RuntimeMetrics().registry, BuilderMetrics().registry):
        for family in registry.collect():
            names |= {family.name, f"{family.name}_total", f"{family.name}_bucket"}
    stats = type("Stats", (), dict(num_free_blocks=1, num_total_blocks=2, num_live_requests=0,
                                   num_waiting=0, num_running=0, num_steps=0, num_preemptions=0))
    collector = EngineStatsCollector(lambda: EngineSnapshot("k", "m", stats))
    for family in collector.collect():
        names |= {family.name, f"{family.name}_total"}
    return names


def _series_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(kiln_[a-z0-9_]+)", expr))


def test_keda_scales_each_model_on_its_own_waiting_requests_and_kv_use(rendered):
    objects = rendered["observability"]
    scaled = by_kind(objects, "ScaledObject")
    assert set(scaled) == {"demo-kiln-llama3-8b"}
    assert set(by_kind(objects, "HorizontalPodAutoscaler")) == {"demo-kiln-smollm2"}
    spec = scaled["demo-kiln-llama3-8b"]["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "demo-kiln-llama3-8b"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 8)
    triggers = {t["name"]: t for t in spec["triggers"]}
    waiting, kv = triggers["waiting-requests-per-pod"], triggers["kv-cache-usage"]
    assert waiting["metricType"] == "AverageValue" and waiting["metadata"]["threshold"] == "8"
    assert kv["metricType"] == "Value" and kv["metadata"]["threshold"] == "0.85"
    known = _metric_names()
    for trigger in (waiting, kv):
        query = trigger["metadata"]["query"]
        assert 'model="llama3-8b"' in query and 'namespace="kiln"' in query
        assert _series_in(query) and _series_in(query) <= known, query
        assert trigger["metadata"]["serverAddress"].startswith("http://kube-prometheus-stack")
    # The served model name the queries select on is what the pod is told to label with.
    args = by_kind(objects, "Deployment")["demo-kiln-llama3-8b"]["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert args[args.index("--served-model-name") + 1] == "llama3-8b"
    assert "replicas" not in by_kind(objects, "Deployment")["demo-kiln-llama3-8b"]["spec"]


def test_grafana_dashboard_charts_only_series_kiln_exports(rendered):
    (dashboard,) = by_kind(rendered["observability"], "ConfigMap").values()
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["kiln.json"])
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    used = set().union(*map(_series_in, exprs))
    assert used and used <= _metric_names(), used - _metric_names()
    assert not by_kind(rendered["default"], "ConfigMap")


@pytest.mark.parametrize("value_set", ["default", "observability", "metrics-off"])
def test_metrics_ports_flags_and_scrape_config_agree(value_set, rendered):
    objects = rendered[value_set]
    metrics_on = VALUE_SETS[value_set].get("metrics", {}).get("enabled", True)
    monitor = VALUE_SETS[value_set].get("metrics", {}).get("serviceMonitor", {}).get("enabled")
    assert bool(by_kind(objects, "ServiceMonitor")) == bool(metrics_on and monitor)
    for obj in objects:
        for role, spec in pod_templates(obj):
            (c, *_) = spec["containers"]
            if c["name"] not in ("runtime", "builder") or role == "worker":
                continue
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            annotations = (obj["spec"].get("template") or {}).get("metadata", {}).get(
                "annotations", {}) if obj["kind"] == "Deployment" else {}
            if not metrics_on:
                assert "metrics" not in ports and "--metrics-listen" not in c["args"]
                assert not annotations
                continue
            listen = c["args"][c["args"].index("--metrics-listen") + 1]
            assert int(listen.rsplit(":", 1)[1]) == ports["metrics"], obj["metadata"]["name"]
            assert c["args"][c["args"].index("--log-format") + 1] == "json"
            if obj["kind"] == "Deployment":
                scraped = annotations.get("prometheus.io/scrape") == "true"
                assert scraped == (not monitor), obj["metadata"]["name"]
                if scraped:
                    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    for name, service in by_kind(objects, "Service").items():
        names = [p["name"] for p in service["spec"]["ports"]]
        # A headless Service never carries the metrics port: no pod is scraped twice.
        has_metrics = metrics_on and not name.endswith("-headless") and "minio" not in name
        assert ("metrics" in names) == has_metrics, name


def test_runtime_pods_share_startup_tuning_unless_switched_off(rendered):
    servers = [c for c in containers(rendered["gpu-pods"]) if "runtime_service" in c.args]
    assert servers and all("--share-startup-cache" in c.args for c in servers)
    # a SERVING pod is ready within one 2 s period
    assert all(c.probes["startupProbe"]["periodSeconds"] == 2 for c in servers)
    values = {**VALUE_SETS["gpu-pods"], "runtime": {"shareStartupCache": False}}
    servers = [c for c in containers(render(values)) if "runtime_service" in c.args]
    assert servers and not any("--share-startup-cache" in c.args for c in servers)


def _runtime_pods(objects) -> list[dict]:
    """Pod specs whose containers run `runtime_service` (servers and rank workers)."""
    return [spec for obj in objects for _, spec in pod_templates(obj)
            if any("runtime_service" in json.dumps(c.get("command", []) + c.get("args", []))
                   for c in spec["containers"])]


def test_compiled_kernels_stay_in_the_pod_unless_a_node_path_is_given(rendered, tmp_path):
    """Empty by default: no host path in any pod. With one, every runtime container points
    Triton's cache at it and the pod mounts it (created if missing), so later pods on the node
    skip the compiles."""
    for objects in rendered.values():
        for _, spec in (t for obj in objects for t in pod_templates(obj)):
            assert not any("hostPath" in volume for volume in spec.get("volumes", []))
    values = {**VALUE_SETS["gpu-pods"], "runtime": {"kernelCacheHostPath": "/var/lib/kiln/triton"}}
    objects = render(values)
    pods = _runtime_pods(objects)
    assert pods
    manifest = tmp_path / "kernel-cache.yaml"
    manifest.write_text(yaml.safe_dump_all(
        [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}"}, "spec": pod}
         for i, pod in enumerate(pods)]))
    done = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k",
                           KUBE_VERSION, "--quiet", str(manifest)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    for pod in pods:
        assert {"name": "kernel-cache", "hostPath": {"path": "/var/lib/kiln/triton",
                                                     "type": "DirectoryOrCreate"}} in pod["volumes"]
        for container in pod["containers"]:
            assert _env(container)["TRITON_CACHE_DIR"] == "/var/cache/kiln-kernels"
            assert {"name": "kernel-cache", "mountPath": "/var/cache/kiln-kernels"} in \
                container["volumeMounts"]
