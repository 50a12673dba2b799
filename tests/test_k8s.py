"""The deployment manifests: Kubernetes objects valid against the API schemas (kubernetes-validate),
probes on the service's real health routes, CPU requests/limits equal to workers x threads, and
the compose file's replicas behind a load balancer that waits for healthy replicas."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "docker" / "k8s"
K8S_VERSION = "1.30.0"


def load(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def health_paths() -> set[str]:
    from serve.routers import oip, ops

    return {r.path for r in ops.health.routes} | {r.path for r in oip.health.routes}


def cpu(value: str) -> float:
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "hpa.yaml"])
def test_manifests_are_valid_kubernetes(name):
    import kubernetes_validate

    kubernetes_validate.validate(load(name), K8S_VERSION, strict=True)


def test_a_broken_manifest_is_caught():
    import kubernetes_validate

    bad = load("deployment.yaml")
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = load("service.yaml")
    bad["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def _container_checks(container: dict, readiness: str, liveness: str) -> None:
    env = {e["name"]: e["value"] for e in container["env"]}
    threads = int(env["THREADS"]) * int(env.get("WORKERS", "1"))
    res = container["resources"]
    assert cpu(res["requests"]["cpu"]) == cpu(res["limits"]["cpu"]) == threads
    paths = health_paths()
    assert container["readinessProbe"]["httpGet"]["path"] == readiness in paths
    assert container["livenessProbe"]["httpGet"]["path"] == liveness in paths


def test_deployment_service_and_hpa_fit_together():
    dep, svc, hpa = load("deployment.yaml"), load("service.yaml"), load("hpa.yaml")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    _container_checks(container, "/readyz", "/healthz")
    assert svc["spec"]["ports"][0]["targetPort"] in [p["name"] for p in container["ports"]]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_kserve_inference_service():
    import kubernetes_validate

    isvc = load("inferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    # KServe's predictor embeds a Pod spec: its containers and volumes must be valid as one
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": {"containers": predictor["containers"], "volumes": predictor["volumes"]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    _container_checks(container, "/v2/health/ready", "/v2/health/live")


def test_compose_runs_replicas_behind_a_load_balancer():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    app, lb = compose["services"]["classifier"], compose["services"]["lb"]
    assert app["build"]["dockerfile"] == "docker/Dockerfile" and app["deploy"]["replicas"] >= 2
    assert "/readyz" in " ".join(app["healthcheck"]["test"])
    assert lb["depends_on"]["classifier"]["condition"] == "service_healthy"
    assert "ports" not in app  # only the load balancer is published
    nginx = (ROOT / "docker" / "nginx.conf").read_text()
    assert "server classifier:8000" in nginx and "proxy_pass http://classifier" in nginx
    assert float(app["deploy"]["resources"]["limits"]["cpus"]) == int(app["environment"]["THREADS"]) * int(
        app["environment"]["WORKERS"])
