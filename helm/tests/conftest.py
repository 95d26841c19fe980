"""Shared helpers: render the chart with Helm's own engine (helm-python-sdk)."""

from __future__ import annotations

import pathlib

import helm_python as helm
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "herald"
RELEASE = "herald"
NAMESPACE = "herald"

# Realistic value sets besides the defaults.
VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "external-nats": {
        "nats": {
            "enabled": False,
            "url": "nats://nats.nats.svc.cluster.local:4222",
            "credentials": {
                "existingSecret": "herald-nats-creds",
                "userKey": "user",
                "passwordKey": "password",
            },
        },
        "config": {"stream": {"replicas": 3}, "presence": {"replicas": 3}},
    },
    "external-nats-creds-file": {
        "nats": {
            "enabled": False,
            "url": "nats://a:4222,nats://b:4222",
            "credentials": {"existingSecret": "nats-creds", "credsKey": "herald.creds"},
        },
    },
    "ingress": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": [{"host": "rt.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "rt-tls", "hosts": ["rt.example.com"]}],
        },
        "config": {"allowed_origins": ["https://app.example.com"]},
    },
    "autoscaling": {
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 20,
                        "targetMemoryUtilizationPercentage": 80},
    },
    "existing-secret": {"auth": {"existingSecret": "my-herald-jwt", "secretKey": "secret"}},
    "explicit-secret": {"auth": {"secret": "0123456789abcdef0123456789abcdef"}},
    "jwks": {
        "auth": {"generateSecret": False},
        "config": {"auth": {"jwks_url": "https://auth.example.com/.well-known/jwks.json",
                            "issuer": "https://auth.example.com/", "audience": "herald"}},
    },
    "monitoring-and-policies": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "networkPolicy": {
            "enabled": True,
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
            "natsClientsFrom": [{"namespaceSelector": {"matchLabels": {"herald-producer": "true"}}}],
        },
    },
}


@pytest.fixture(scope="session")
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART_DIR))


def render(chart: helm.Chart, values: dict | None = None, **kw) -> dict[str, str]:
    """Template path -> rendered text (as `helm template`/install would)."""
    kw.setdefault("name", RELEASE)
    kw.setdefault("namespace", NAMESPACE)
    kw.setdefault("is_install", True)
    return chart.render(values or {}, **kw)


def objects(rendered: dict[str, str]) -> list[dict]:
    """Every Kubernetes object in the rendered manifests (NOTES.txt excluded)."""
    out = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append(doc)
    return out


def find(objs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in hits]}"
    return hits[0]
