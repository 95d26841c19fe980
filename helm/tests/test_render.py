"""Lint, render and validate the chart with Helm's engine and the Kubernetes schemas."""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

import helm_python as helm
import kubernetes_validate
import pytest

from conftest import CHART_DIR, NAMESPACE, VALUE_SETS, find, objects, render

KUBE_VERSION = "1.30.0"  # the chart's minimum (kubeVersion >=1.30: native preStop sleep)
CRD_KINDS = {"ServiceMonitor"}  # not in the core schemas


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint(name):
    report = helm.lint(str(CHART_DIR), VALUE_SETS[name], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report.get("errors"), report


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
@pytest.mark.parametrize("kube", [KUBE_VERSION, "1.33.0"])
def test_render_validates(chart, name, kube):
    objs = objects(render(chart, VALUE_SETS[name]))
    assert objs
    for o in objs:
        if o["kind"] in CRD_KINDS:
            assert o["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(o, kube, strict=True)
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), names


def test_defaults(chart):
    objs = objects(render(chart))
    kinds = sorted({o["kind"] for o in objs})
    assert kinds == sorted({"ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Secret",
                            "Service", "ServiceAccount", "StatefulSet"}), kinds
    sts = find(objs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    headless = find(objs, "Service", "herald-nats-headless")
    assert headless["spec"]["clusterIP"] == "None"
    cfg = tomllib.loads(find(objs, "ConfigMap", "herald")["data"]["herald.toml"])
    assert cfg["stream"]["replicas"] == 3 and cfg["presence"]["replicas"] == 3
    assert cfg["nats"]["url"] == f"nats://herald-nats.{NAMESPACE}.svc.cluster.local:4222"
    dep = find(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["herald"] and c["args"] == ["serve"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    drain_s = cfg["timeouts"]["drain_timeout_ms"] / 1000
    assert pod["terminationGracePeriodSeconds"] > drain_s + c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["affinity"]["podAntiAffinity"] and pod["topologySpreadConstraints"]
    # the secret is generated (random, 48 characters), never a fixed default
    env = {e["name"]: e for e in c["env"]}
    ref = env["HERALD_AUTH__HS256_SECRET"]["valueFrom"]["secretKeyRef"]
    secret = find(objs, "Secret", ref["name"])
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    other = find(objects(render(chart)), "Secret", ref["name"])
    assert other["data"][ref["key"]] != secret["data"][ref["key"]], "generated secrets must differ"
    job = find(objs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["setup"]


def test_notes_tell_how_to_connect(chart):
    notes = render(chart)["herald/templates/NOTES.txt"]
    assert f"ws://herald.{NAMESPACE}.svc.cluster.local:80/ws" in notes
    notes = render(chart, VALUE_SETS["ingress"])["herald/templates/NOTES.txt"]
    assert "wss://rt.example.com/ws" in notes


def test_external_nats(chart):
    objs = objects(render(chart, VALUE_SETS["external-nats"]))
    assert not [o for o in objs if o["kind"] == "StatefulSet"]
    cfg = tomllib.loads(find(objs, "ConfigMap", "herald")["data"]["herald.toml"])
    assert cfg["nats"]["url"] == "nats://nats.nats.svc.cluster.local:4222"
    env = {e["name"]: e for e in find(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HERALD_NATS__USER"]["valueFrom"]["secretKeyRef"] == {"name": "herald-nats-creds", "key": "user"}
    assert env["HERALD_NATS__PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    job_env = {e["name"] for e in find(objs, "Job")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"HERALD_NATS__USER", "HERALD_NATS__PASSWORD", "HERALD_CONFIG"} <= job_env


def test_external_nats_creds_file(chart):
    objs = objects(render(chart, VALUE_SETS["external-nats-creds-file"]))
    cfg = tomllib.loads(find(objs, "ConfigMap", "herald")["data"]["herald.toml"])
    assert cfg["nats"]["creds_file"] == "/etc/herald/nats/herald.creds"
    pod = find(objs, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert "/etc/herald/nats" in mounts
    assert any(v.get("secret", {}).get("secretName") == "nats-creds" for v in pod["volumes"])


def test_external_nats_needs_url(chart):
    with pytest.raises(helm.HelmError, match="nats.url is required"):
        render(chart, {"nats": {"enabled": False}})


def test_ingress(chart):
    ing = find(objects(render(chart, VALUE_SETS["ingress"])), "Ingress")
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == {
        "name": "herald", "port": {"name": "http"}}


def test_autoscaling(chart):
    objs = objects(render(chart, VALUE_SETS["autoscaling"]))
    assert "replicas" not in find(objs, "Deployment")["spec"]
    hpa = find(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] == 20
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}


def test_existing_secret(chart):
    objs = objects(render(chart, VALUE_SETS["existing-secret"]))
    assert not [o for o in objs if o["kind"] == "Secret"]
    env = {e["name"]: e for e in find(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HERALD_AUTH__HS256_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "my-herald-jwt", "key": "secret"}


def test_jwks_needs_no_secret(chart):
    objs = objects(render(chart, VALUE_SETS["jwks"]))
    assert not [o for o in objs if o["kind"] == "Secret"]
    env = {e["name"] for e in find(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "HERALD_AUTH__HS256_SECRET" not in env


def test_no_token_key_fails(chart):
    with pytest.raises(helm.HelmError, match="no token key configured"):
        render(chart, {"auth": {"generateSecret": False}})


@pytest.mark.parametrize("values, message", [
    ({"auth": {"secret": "short"}}, "at least 16 bytes"),
    ({"terminationGracePeriodSeconds": 12}, "terminationGracePeriodSeconds"),
    ({"config": {"stream": {"replicas": 5}}}, "cannot exceed nats.replicas"),
    ({"config": {"auth": {"hs256_secret": "0123456789abcdefXX"}}}, "auth.secret or auth.existingSecret"),
])
def test_render_refuses(chart, values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(chart, values)


@pytest.mark.parametrize("values", [
    {"replicaCount": "two"},
    {"replicaCount": -1},
    {"image": {"pullPolicy": "Sometimes"}},
    {"service": {"type": "Cluster"}},
    {"nats": {"replicas": 2}},
    {"nats": {"url": 42}},
    {"containerPort": 70000},
    {"config": {"log": {"format": "yaml"}}},
    {"config": {"stream": {"storage": "disk"}}},
    {"config": {"allowed_origins": "https://a.example.com"}},
    {"auth": {"generateSecret": "yes"}},
    {"autoscaling": {"enabled": True, "minReplicas": 0}},
    {"unknownTopLevel": 1},
    {"ingress": {"enabled": "true"}},
])
def test_schema_rejects(chart, values):
    with pytest.raises(helm.HelmError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmError):
        render(chart, values)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_schema_accepts_value_sets(chart, name):
    chart.validate_schema(VALUE_SETS[name])


def test_dockerfile_matches_chart(chart):
    """The chart's defaults run the image the repository's Dockerfile builds."""
    from conftest import ROOT

    text = (ROOT / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]  # the runtime stage
    assert 'ENTRYPOINT ["herald"]' in final and 'CMD ["serve"]' in final
    assert "cargo build --release --locked -p herald" in text
    objs = objects(render(chart))
    pod = find(objs, "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert f"EXPOSE {c['ports'][0]['containerPort']}" in final
    uid = pod["securityContext"]["runAsUser"]
    assert f"USER {uid}:{pod['securityContext']['runAsGroup']}" in final
    assert c["command"] == ["herald"]
    values = chart.values
    assert c["image"] == f"{values['image']['repository']}:{chart.metadata['appVersion']}"


# values documented as a whole in README.md rather than key by key
WHOLE = {"config", "resources", "livenessProbe", "readinessProbe", "startupProbe",
         "podSecurityContext", "securityContext", "setupJob.resources", "nats.resources",
         "nats.podSecurityContext", "nats.securityContext"}


def _keys(d: dict, prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v and key not in WHOLE and not k.endswith(("annotations", "labels", "Labels")):
            yield from _keys(v, key)
        else:
            yield key


def test_readme_lists_every_value(chart):
    from conftest import CHART_DIR

    readme = (CHART_DIR / "README.md").read_text()
    keys = list(_keys(chart.values))
    assert len(keys) > 50
    missing = [k for k in keys if f"| `{k}` |" not in readme]
    assert not missing, f"README.md does not list: {missing}"
