"""Render the chart, then run exactly what it renders on loopback.

From the rendered manifests this test takes the NATS StatefulSet (command, args,
env, ports, volumes) and its ConfigMap, the setup hook Job, the edge Deployment
(command, args, env, mounted herald.toml) and the Secret. It starts three
nats-server processes and two `herald serve` edges with that configuration, where
the only changes are the ones a cluster makes: every Service/pod DNS name and
container port is mapped to a free 127.0.0.1 port, every volume mount to a
temporary directory, and `fieldRef`/`secretKeyRef` values are resolved the way the
kubelet would. It then checks that the edges become ready, the stream exists at
the rendered replica count, and an event published to NATS reaches WebSocket
clients on both edges. A typo in the chart fails here.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import NAMESPACE, ROOT, find, objects, render
from wsclient import WebSocket

HERALD_BIN = os.environ.get("HERALD_BIN") or str(ROOT / "target" / "debug" / "herald")
NATS_BIN = shutil.which("nats-server")

HAVE_BINS = os.path.exists(HERALD_BIN) and NATS_BIN is not None
if not HAVE_BINS and os.environ.get("HELM_TESTS_REQUIRE_RUN") == "1":  # set by scripts/test-helm.sh
    raise RuntimeError(f"render-and-run needs {HERALD_BIN} and nats-server on PATH")
pytestmark = pytest.mark.skipif(
    not HAVE_BINS,
    reason="needs target/debug/herald (scripts/test.sh builds it) and nats-server on PATH",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class Pod:
    """One container of a rendered pod, mapped onto this machine."""

    def __init__(self, name: str, pod_spec: dict, tmp: pathlib.Path, cluster: "Cluster"):
        self.name = name
        self.spec = pod_spec
        self.container = pod_spec["containers"][0]
        self.root = tmp / name
        self.root.mkdir(parents=True)
        # containerPort -> loopback port
        self.ports = {p["containerPort"]: free_port() for p in self.container.get("ports", [])}
        self.port_names = {p["name"]: p["containerPort"] for p in self.container.get("ports", [])}
        self.cluster = cluster
        self.paths: dict[str, str] = {}
        self.config_mounts: list[pathlib.Path] = []

    def mount(self) -> "Pod":
        """Writes the volumes and resolves env, with the cluster's DNS map applied."""
        name, pod_spec, cluster = self.name, self.spec, self.cluster
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in cluster.claim_templates.get(name, [])}
        for m in self.container.get("volumeMounts", []):
            local = self.root / ("vol" + m["mountPath"].replace("/", "_"))
            vol = volumes.get(m["name"])
            if vol is None:
                assert m["name"] in claims, f"{name}: mount {m['name']} has no volume"
                local.mkdir()
            elif "configMap" in vol:
                data = cluster.configmap(vol["configMap"]["name"])["data"]
                if "subPath" in m:
                    local.write_text(cluster.map_text(data[m["subPath"]], self))
                else:
                    local.mkdir()
                    for k, v in data.items():
                        (local / k).write_text(cluster.map_text(v, self))
                self.config_mounts.append(local)
            elif "secret" in vol:
                pytest.skip("secret volumes are not exercised here")
            else:
                assert "emptyDir" in vol, vol
                local.mkdir()
            self.paths[m["mountPath"]] = str(local)
        for local in self.config_mounts:  # paths inside config files (store_dir, pid_file, ...)
            for f in [local] if local.is_file() else list(local.iterdir()):
                f.write_text(self.map_paths(f.read_text()))
        self.env = {"PATH": os.environ["PATH"]}
        for e in self.container.get("env", []):
            if "value" in e:
                v = e["value"]
            elif "fieldRef" in e["valueFrom"]:
                assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
                v = name
            elif "secretKeyRef" in e["valueFrom"]:
                ref = e["valueFrom"]["secretKeyRef"]
                v = base64.b64decode(cluster.secret(ref["name"])["data"][ref["key"]]).decode()
            else:
                raise AssertionError(f"unsupported env source {e}")
            self.env[e["name"]] = self.map_paths(v)
        return self

    def map_paths(self, text: str) -> str:
        for mount in sorted(self.paths, key=len, reverse=True):
            text = text.replace(mount, self.paths[mount])
        return text

    def argv(self) -> list[str]:
        cmd = [self.map_paths(a) for a in self.container.get("command", []) + self.container.get("args", [])]
        if cmd[0] == "herald":
            cmd[0] = HERALD_BIN
        return cmd

    def port(self, ref) -> int:
        return self.ports[self.port_names.get(ref, ref)]

    def http_ok(self, probe: dict) -> bool:
        get = probe["httpGet"]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port(get['port'])}{get['path']}", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> subprocess.Popen:
        log = open(self.root / "log.txt", "wb")
        self.proc = subprocess.Popen(self.argv(), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.root)
        return self.proc

    def log(self) -> str:
        return (self.root / "log.txt").read_text(errors="replace")[-4000:]

    def wait_ready(self, probe: dict, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.http_ok(probe):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.log()}")


class Cluster:
    """The rendered objects plus the DNS names -> loopback mapping."""

    def __init__(self, objs: list[dict]):
        self.objs = objs
        self.hosts: dict[str, str] = {}  # "dns-name:port" -> "127.0.0.1:port"
        self.claim_templates: dict[str, list] = {}
        self.procs: list[subprocess.Popen] = []

    def configmap(self, name: str) -> dict:
        return find(self.objs, "ConfigMap", name)

    def secret(self, name: str) -> dict:
        return find(self.objs, "Secret", name)

    def map_text(self, text: str, pod: Pod) -> str:
        """Rewrites a config file the way the cluster network and volumes would."""
        for name in sorted(self.hosts, key=len, reverse=True):
            text = text.replace(name, self.hosts[name])
        # listening on every interface at a containerPort -> that pod's loopback port
        def listen(m):
            port = int(m.group(1))
            if not pod.ports:  # a Job: binds nothing
                return m.group(0)
            assert port in pod.ports, f"{pod.name} listens on {port}, which is not a containerPort"
            return f"127.0.0.1:{pod.ports[port]}"
        text = re.sub(r"0\.0\.0\.0:(\d+)", listen, text)
        assert ".svc.cluster.local" not in text, f"unmapped cluster DNS name in:\n{text}"
        return text

    def service_hosts(self, svc: dict, pods: list[Pod], index: int | None = None) -> None:
        """Maps a Service's DNS names (and, if headless, per-pod names) to pods' ports."""
        name, ns = svc["metadata"]["name"], NAMESPACE
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            if svc["spec"].get("clusterIP") == "None":
                for pod in pods:
                    self.hosts[f"{pod.name}.{name}.{ns}.svc.cluster.local:{p['port']}"] = \
                        f"127.0.0.1:{pod.port(target)}"
            else:
                pod = pods[index or 0]
                self.hosts[f"{name}.{ns}.svc.cluster.local:{p['port']}"] = f"127.0.0.1:{pod.port(target)}"

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def services_for(objs, labels):
    return [s for s in objs if s["kind"] == "Service" and matches(s["spec"]["selector"], labels)]


def test_render_and_run(chart, tmp_path):
    objs = objects(render(chart))
    cluster = Cluster(objs)
    try:
        run(cluster, objs, tmp_path)
    finally:
        cluster.stop()


def run(cluster: Cluster, objs: list[dict], tmp: pathlib.Path) -> None:
    # ---- NATS: the StatefulSet's pods, named as Kubernetes names them
    sts = find(objs, "StatefulSet")
    replicas = sts["spec"]["replicas"]
    assert replicas == 3
    tmpl = sts["spec"]["template"]
    assert matches(sts["spec"]["selector"]["matchLabels"], tmpl["metadata"]["labels"])
    names = [f"{sts['metadata']['name']}-{i}" for i in range(replicas)]
    for n in names:
        cluster.claim_templates[n] = sts["spec"]["volumeClaimTemplates"]

    nats_pods = [Pod(n, tmpl["spec"], tmp, cluster) for n in names]
    headless = [s for s in services_for(objs, tmpl["metadata"]["labels"]) if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1 and headless[0]["metadata"]["name"] == sts["spec"]["serviceName"]
    cluster.service_hosts(headless[0], nats_pods)
    for pod in nats_pods:
        pod.mount()
    for pod in nats_pods:
        assert pod.argv()[0] == "nats-server"
        cluster.procs.append(pod.start())
    readiness = tmpl["spec"]["containers"][0]["readinessProbe"]
    liveness = tmpl["spec"]["containers"][0]["livenessProbe"]
    for pod in nats_pods:
        pod.wait_ready(readiness, timeout=30)
    for pod in nats_pods:
        pod.wait_ready(liveness, timeout=30)

    # ---- the client Service, as the edges and the Job see it (edge i -> server i)
    client_svcs = [s for s in services_for(objs, tmpl["metadata"]["labels"]) if s["spec"].get("clusterIP") != "None"]
    assert len(client_svcs) == 1

    # ---- the setup hook Job (retried like backoffLimit would, while JetStream elects a leader)
    job = find(objs, "Job")
    cluster.service_hosts(client_svcs[0], nats_pods, index=2)
    setup = Pod("setup", job["spec"]["template"]["spec"], tmp, cluster).mount()
    deadline = time.time() + 60
    while True:
        r = subprocess.run(setup.argv(), env=setup.env, capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            break
        assert time.time() < deadline, f"herald setup failed:\n{r.stdout}\n{r.stderr}"
        time.sleep(1)
    assert "stream HERALD: created" in r.stdout, r.stdout

    # stream and bucket exist at the chart's replica count
    jsz = json.load(urllib.request.urlopen(
        f"http://127.0.0.1:{nats_pods[0].port('monitor')}/jsz?streams=true&config=true", timeout=5))
    streams = {s["name"]: s for a in jsz["account_details"] for s in a.get("stream_detail", [])}
    assert streams["HERALD"]["config"]["num_replicas"] == 3
    assert len(streams["HERALD"]["cluster"].get("replicas", [])) == 2  # + the leader
    assert streams["KV_herald_presence"]["config"]["num_replicas"] == 3

    # ---- two edges from the Deployment
    dep = find(objs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod_spec = dep["spec"]["template"]["spec"]
    edges = []
    for i in range(2):
        cluster.service_hosts(client_svcs[0], nats_pods, index=i)
        edge = Pod(f"{dep['metadata']['name']}-5d8f9c7b6-{'ab'[i]}x{i}z", pod_spec, tmp, cluster).mount()
        assert edge.argv()[1:] == ["serve"]
        cluster.procs.append(edge.start())
        edges.append(edge)
    c = pod_spec["containers"][0]
    for edge in edges:
        edge.wait_ready(c["startupProbe"])
        edge.wait_ready(c["livenessProbe"])
        edge.wait_ready(c["readinessProbe"])
    # the edge Service routes to the container port the edges listen on
    svc = find(objs, "Service", dep["metadata"]["name"])
    assert matches(svc["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    ws_ports = [e.port(svc["spec"]["ports"][0]["targetPort"]) for e in edges]

    # ---- a client on each edge; an event published to NATS reaches both
    secret_env = edges[0].env["HERALD_AUTH__HS256_SECRET"]
    assert len(secret_env) >= 32
    token = subprocess.run([HERALD_BIN, "token", "--sub", "alice", "--room", "channel:*"],
                           env={"PATH": os.environ["PATH"], "HERALD_AUTH__HS256_SECRET": secret_env},
                           capture_output=True, text=True, check=True).stdout.strip()
    clients = []
    for port, edge in zip(ws_ports, edges):
        ws = WebSocket(f"ws://127.0.0.1:{port}/ws?token={token}")
        welcome = ws.recv_json()
        assert welcome["type"] == "welcome" and welcome["edge"] == edge.name, welcome
        ws.send_json({"type": "join", "id": 1, "room": "channel:42"})
        while (f := ws.recv_json()).get("id") != 1:
            pass
        assert f["type"] == "joined", f
        clients.append(ws)
    r = subprocess.run([HERALD_BIN, "publish", "channel:42", "message:new", '{"text":"hello"}'],
                       env=setup.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for ws in clients:
        while (f := ws.recv_json())["type"] != "event":
            pass
        assert f["room"] == "channel:42" and f["event"] == "message:new" and f["data"] == {"text": "hello"}, f
        assert f["seq"] == 1
        ws.close()

    # metrics are served where a ServiceMonitor would scrape them
    with urllib.request.urlopen(f"http://127.0.0.1:{ws_ports[0]}/metrics", timeout=5) as m:
        assert m.status == 200 and b"herald" in m.read()
