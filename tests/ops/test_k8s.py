"""k8s/: the Kubernetes manifests are valid for the API server, and they fit
the server they deploy.

Validity: ``kubernetes-validate --strict`` (the ``test`` extra, so ``make
setup`` installs it) accepts every document of every file in ``k8s/`` against
the schemas of :data:`K8S_VERSIONS`, and rejects an unknown field in a copy
of the Deployment, which shows that ``--strict`` is in force.

Fit: the ConfigMap's configuration loads with aiosrv's own loader, under the
environment the container gets (the image's ``ENV`` from the Dockerfile, then
the Deployment's ``env`` with dummy secret values); the env names, ports,
probe paths, scrape annotations, mounts, user id, shutdown timing, selectors
and the autoscaler are checked against that loaded configuration, aiosrv's
routes and the Dockerfile, never against copies of their values.

Then the deployment runs for real: the ConfigMap's file, the container's
environment, the image's command (``aiosrv serve``), a real ``redis-server``
with the Secret's dummy password for the Redis engine the ConfigMap names;
only hosts and ports are moved to free loopback ones. The probe paths answer
200, and SIGTERM with a client connected ends the process with status 0 within
the time the pod gets after its preStop hook.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import websocket
import yaml

from aiosrv.api import API_ROUTES, METRICS_ROUTES
from aiosrv.config import (
    CONFIG_PATH_ENV,
    ENV_VARS,
    FIELDS,
    FIELDS_BY_PATH,
    Config,
    listeners,
    load_config,
)
from tests.cli.conftest import ClientWebSocket, ServerProcess, clean_env, free_ports
from tests.ops.dockerfile import Instruction, env_pairs, exec_form, final_stage
from tests.redis_support import RedisServer

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DOCKERFILE = REPO / "Dockerfile"
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"

#: The Kubernetes versions the manifests are validated against: the oldest
#: minor still common on managed clusters, and the newest the installed
#: kubernetes-validate ships schemas for (docs/kubernetes.md says the same).
K8S_VERSIONS = ("1.30.0", "1.37.0")

#: Core API groups only: no CRDs (no ServiceMonitor).
CORE_KINDS = {
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
}

NAME = "websocket-server"
NAMESPACE = "websocket-system"
HPA_FILE = K8S / "websocket-hpa.yaml"
MAIN_FILE = K8S / "websocket-deployment.yaml"


# --------------------------------------------------------------------------- reading


def manifest_files() -> list[Path]:
    files = sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))
    assert files, f"no manifests in {K8S}"
    return files


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        assert isinstance(d, dict) and "kind" in d, f"{path.name}: not an object: {d!r}"
    return docs


def all_documents() -> list[dict[str, Any]]:
    return [d for path in manifest_files() for d in documents(path)]


def find(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in all_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name!r} in k8s/"
    return found[0]


def deployment() -> dict[str, Any]:
    return find("Deployment", NAME)


def pod_spec() -> dict[str, Any]:
    return deployment()["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container() -> dict[str, Any]:
    (c,) = [c for c in pod_spec()["containers"] if c["name"] == NAME]
    return c  # type: ignore[no-any-return]


def configmap_volume() -> tuple[dict[str, Any], str]:
    """The ConfigMap mounted in the server's container, and its mount path."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    (mount,) = [m for m in container()["volumeMounts"] if "configMap" in volumes[m["name"]]]
    cm = find("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    return cm, mount["mountPath"]


def config_file() -> tuple[str, str]:
    """(the path AIOSRV_CONFIG names in the pod, the file's text from the ConfigMap)."""
    cm, mount_path = configmap_volume()
    path = deployment_env()[CONFIG_PATH_ENV]
    directory, _, key = path.rpartition("/")
    assert directory == mount_path, f"{CONFIG_PATH_ENV}={path} is not in the mount {mount_path}"
    assert key in cm["data"], f"the ConfigMap has no key {key!r} ({sorted(cm['data'])})"
    return path, cm["data"][key]


def dummy(key: str) -> str:
    return f"dummy-{key}-0123456789"


def deployment_env(secret_value: Callable[[str], str] = dummy) -> dict[str, str]:
    """The container's ``env``: plain values as written, Secret keys as dummy values."""
    env: dict[str, str] = {}
    for item in container().get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret_value(ref["key"])
    return env


def secret_refs(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in c.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }


def write_config(tmp_path: Path) -> Path:
    _, text = config_file()
    path = tmp_path / "deployment.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- the image


def dockerfile_stage() -> list[Instruction]:
    """The instructions of the Dockerfile's last stage (the image)."""
    if not DOCKERFILE.exists():
        pytest.fail(f"{DOCKERFILE} is missing: the Deployment runs the image built from it")
    return final_stage(DOCKERFILE)


def image_env() -> dict[str, str]:
    return dict(pair for ins in dockerfile_stage() if ins.kind == "ENV" for pair in env_pairs(ins))


def image_uid() -> int:
    stage = dockerfile_stage()
    args = {}
    for ins in stage:
        if ins.kind == "ARG" and "=" in ins.args:
            k, v = ins.args.split("=", 1)
            args[k.strip()] = v.strip()
    (user,) = [ins.args.split(":")[0].strip() for ins in stage if ins.kind == "USER"][-1:]
    if user.isdigit():
        return int(user)
    for ins in stage:
        if ins.kind == "RUN" and "useradd" in ins.args:
            m = re.search(
                r"--uid\s+\"?\$?\{?(\w+)\}?\"?[^&;]*\s" + re.escape(user) + r"\b", ins.args
            )
            if m:
                value = m.group(1)
                return int(value if value.isdigit() else args[value])
    raise AssertionError(f"cannot find the uid of the image's user {user!r} in {DOCKERFILE}")


def image_command() -> list[str]:
    stage = dockerfile_stage()
    entry = [exec_form(ins.args) for ins in stage if ins.kind == "ENTRYPOINT"][-1:]
    cmd = [exec_form(ins.args) for ins in stage if ins.kind == "CMD"][-1:]
    return [*(entry[0] if entry else []), *(cmd[0] if cmd else [])]


def container_env(secret_value: Callable[[str], str] = dummy) -> dict[str, str]:
    """The configuration variables the server process sees in the pod: the
    image's ENV, overridden by the Deployment's env."""
    names = set(ENV_VARS) | {CONFIG_PATH_ENV}
    env = {k: v for k, v in image_env().items() if k in names}
    env.update(deployment_env(secret_value))
    return env


def loaded(tmp_path: Path, env: dict[str, str] | None = None) -> Config:
    """The ConfigMap's configuration, as the pod's server loads it (``env``
    None: the container's environment with dummy secrets)."""
    return load_config(write_config(tmp_path), env=container_env() if env is None else env)


# --------------------------------------------------------------------------- validity


def validate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    if not VALIDATE.exists():
        pytest.fail(
            f"kubernetes-validate is not installed ({VALIDATE}): run `make setup` "
            "(pyproject.toml's test extra)"
        )
    return subprocess.run(
        [str(VALIDATE), *map(str, args)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_strict(version: str) -> None:
    files = manifest_files()
    r = validate("--strict", "-k", version, *files)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    lines = [line for line in out.splitlines() if line.strip()]
    # one "passed" line per document: nothing skipped, no warning
    assert all(line.startswith("INFO ") and " passed " in line for line in lines), out
    assert len(lines) == sum(len(documents(f)) for f in files), out
    short = version.rsplit(".", 1)[0]
    assert all(line.endswith(f"against version {short}") for line in lines), out


def test_validator_rejects_an_unknown_field(tmp_path: Path) -> None:
    doc = deployment()
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(doc))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {"httpGet": {}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    version = K8S_VERSIONS[-1]
    ok = validate("--strict", "-k", version, good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    r = validate("--strict", "-k", version, bad)
    assert r.returncode != 0
    assert "'readinessProbes' was unexpected" in r.stdout + r.stderr, r.stdout + r.stderr
    # without --strict the typo would pass: the tests must keep --strict
    assert validate("-k", version, bad).returncode == 0


def test_core_kinds_in_one_namespace_and_no_secret_values() -> None:
    docs = all_documents()
    for d in docs:
        assert (d["apiVersion"], d["kind"]) in CORE_KINDS, (d["apiVersion"], d["kind"])
        if d["kind"] == "Namespace":
            assert d["metadata"]["name"] == NAMESPACE
        else:
            assert d["metadata"]["namespace"] == NAMESPACE, d["metadata"]
    ns = find("Namespace", NAMESPACE)
    assert ns["metadata"]["name"] == NAMESPACE
    # the guide's names
    assert find("Deployment", NAME)["kind"] == "Deployment"
    assert HPA_FILE in manifest_files() and MAIN_FILE in manifest_files()
    assert [d["kind"] for d in documents(HPA_FILE)] == ["HorizontalPodAutoscaler"]
    # secrets only by reference, to one Secret the operator creates
    assert "Secret" not in {d["kind"] for d in docs}
    names = {
        ref["name"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        for ref in secret_refs(c).values()
    }
    assert names == {"websocket-server-secrets"}, names


# --------------------------------------------------------------------------- configuration


def test_configmap_loads_with_the_servers_loader(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    alone = load_config(path, env={})  # every problem would raise ConfigError
    # no secret in the ConfigMap
    for spec in FIELDS:
        if spec.secret:
            assert alone.get(spec.path) is None, f"{spec.path} has a value in the ConfigMap"
    # several replicas share one broker
    assert alone.broker.engine == "redis"
    # in the pod: the image's ENV and the Deployment's env over the file
    pod = loaded(tmp_path)
    secrets = {spec.path for spec in FIELDS if spec.secret}
    changed = {spec.path for spec in FIELDS if pod.get(spec.path) != alone.get(spec.path)}
    # the environment adds secrets and nothing else: no variable of the image
    # or the Deployment hides a ConfigMap value
    assert changed <= secrets, sorted(changed - secrets)
    refs = secret_refs(container())
    for name, ref in refs.items():
        assert pod.get(ENV_VARS[name]) == dummy(ref["key"]), name
    # the server refuses auth without a credential: one of the two is in the Secret
    assert {"AUTH_TOKEN", "JWT_SECRET"} & set(refs)
    # optional keys left out of the Secret leave their variables unset
    required = {n for n, ref in refs.items() if not ref.get("optional", False)}
    partial = {k: v for k, v in container_env().items() if k not in refs or k in required}
    assert load_config(path, env=partial).security.jwt_secret is None


def test_env_names_are_the_servers() -> None:
    env = container().get("env", [])
    assert len({e["name"] for e in env}) == len(env), "an env name appears twice"
    # The ConfigMap is the one place for every setting but secrets: environment
    # variables beat the file, so neither the image (Dockerfile ENV) nor the
    # Deployment may set a configuration variable that is not a secret (nor
    # blank one: there is nothing to unset).
    image = set(image_env()) & set(ENV_VARS)
    assert not image, f"the image's ENV sets {sorted(image)}, which would hide the ConfigMap"
    for item in env:
        name = item["name"]
        assert name in ENV_VARS or name == CONFIG_PATH_ENV, f"aiosrv does not read {name}"
        if name == CONFIG_PATH_ENV:
            assert item.get("value"), item
            continue
        spec = FIELDS_BY_PATH[ENV_VARS[name]]
        assert spec.secret, f"{name} is not a secret: set {spec.path} in the ConfigMap"
        assert "secretKeyRef" in item.get("valueFrom", {}), f"{name}: a secret needs a Secret"
        assert "value" not in item, name


def test_config_mounted_where_aiosrv_config_points() -> None:
    path, _ = config_file()
    cm, mount_path = configmap_volume()
    (mount,) = [m for m in container()["volumeMounts"] if m["mountPath"] == mount_path]
    assert mount.get("readOnly") is True
    # the image points at the same file, so the Deployment's value is no surprise
    assert image_env().get(CONFIG_PATH_ENV) in (None, path)
    assert cm["metadata"]["namespace"] == deployment()["metadata"]["namespace"]


def named_ports(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


def resolve(port: int | str, c: dict[str, Any]) -> int:
    return named_ports(c)[port] if isinstance(port, str) else port


def test_ports_probes_and_scrape_annotations(tmp_path: Path) -> None:
    cfg = loaded(tmp_path)
    c = container()
    ports = named_ports(c)
    assert ports == {
        "websocket": cfg.websocket.port,
        "api": cfg.api.port,
        "metrics": cfg.monitoring.metrics_port,
    }
    assert {p["protocol"] for p in c["ports"]} == {"TCP"}
    # one container port per listener the server opens, and no other
    assert sorted(ports.values()) == sorted(port for _, port, _ in listeners(cfg))
    gets = {r.path for r in API_ROUTES if r.method == "GET"}
    for probe, path in (("readinessProbe", "/health"), ("livenessProbe", "/status")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, (probe, get)
        assert get["path"] in gets, (probe, get)
        assert resolve(get["port"], c) == cfg.api.port, (probe, get)
        assert get.get("scheme", "HTTP") == ("HTTPS" if cfg.security.ssl_certfile else "HTTP")
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == cfg.monitoring.metrics_port
    assert annotations["prometheus.io/path"] in {r.path for r in METRICS_ROUTES}
    # the Service: the WebSocket and the API, by the container's port names
    svc = find("Service", NAME)["spec"]
    assert svc["type"] == "ClusterIP"
    assert svc["sessionAffinity"] == "None"
    by_name = {p["name"]: p for p in svc["ports"]}
    assert set(by_name) == {"websocket", "api"}
    assert by_name["websocket"]["port"] == resolve(by_name["websocket"]["targetPort"], c)
    assert resolve(by_name["websocket"]["targetPort"], c) == cfg.websocket.port
    assert resolve(by_name["api"]["targetPort"], c) == cfg.api.port
    assert by_name["api"]["port"] == cfg.api.port


def prestop_seconds() -> float:
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/sleep" and len(command) == 2, command
    return float(command[1])


def test_shutdown_fits_the_termination_grace_period(tmp_path: Path) -> None:
    cfg = loaded(tmp_path)
    grace, window = cfg.shutdown.grace_period, cfg.shutdown.drain_window
    termination = pod_spec()["terminationGracePeriodSeconds"]
    prestop = prestop_seconds()
    assert prestop > 0
    assert 0 < window <= grace
    assert termination > prestop + grace, (termination, prestop, grace)


def test_pod_security_matches_the_image(tmp_path: Path) -> None:
    cfg = loaded(tmp_path)
    spec, c = pod_spec(), container()
    pod_sc, sc = spec["securityContext"], c["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == image_uid() != 0
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # writable: /tmp and the log directory, as emptyDirs
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = {m["mountPath"] for m in c["volumeMounts"] if "emptyDir" in volumes[m["name"]]}
    workdir = [ins.args for ins in dockerfile_stage() if ins.kind == "WORKDIR"][-1]
    assert {"/tmp", f"{workdir}/logs"} <= writable, writable
    if cfg.logging.file is not None:
        log = (
            cfg.logging.file
            if cfg.logging.file.startswith("/")
            else f"{workdir}/{cfg.logging.file}"
        )
        assert any(log.startswith(w + "/") for w in writable), log
    # the image's command runs (aiosrv serve); the guide's `kubectl set image` names it
    assert "command" not in c and "args" not in c
    assert image_command()[:2] == ["aiosrv", "serve"]
    assert c["name"] == deployment()["metadata"]["name"] == NAME
    assert c["resources"] == {
        "requests": {"memory": "2Gi", "cpu": "1000m"},
        "limits": {"memory": "4Gi", "cpu": "2000m"},
    }
    # no <SERVICE>_PORT variables from Kubernetes, no API token in the pod
    assert spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False


def service_link_names(service: str, ports: list[dict[str, Any]]) -> set[str]:
    """The variables Kubernetes puts in pods for a Service when service links are on."""
    base = service.upper().replace("-", "_")
    names = {f"{base}_SERVICE_HOST", f"{base}_SERVICE_PORT", f"{base}_PORT"}
    for p in ports:
        proto = p.get("protocol", "TCP")
        prefix = f"{base}_PORT_{p['port']}_{proto}"
        names |= {prefix, f"{prefix}_PROTO", f"{prefix}_PORT", f"{prefix}_ADDR"}
        if "name" in p:
            names.add(f"{base}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}")
    return names


def test_selectors_labels_and_autoscaler(tmp_path: Path) -> None:
    cfg = loaded(tmp_path)
    dep = deployment()
    selector = dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert find("Service", NAME)["spec"]["selector"] == selector
    assert find("PodDisruptionBudget", NAME)["spec"]["selector"]["matchLabels"] == selector
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert all(s["labelSelector"]["matchLabels"] == selector for s in spread)
    pdb = find("PodDisruptionBudget", NAME)["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": pdb["selector"]}
    # no other Deployment's pods carry the server's labels
    for other in all_documents():
        if other["kind"] == "Deployment" and other["metadata"]["name"] != NAME:
            other_labels = other["spec"]["template"]["metadata"]["labels"]
            assert not selector.items() <= other_labels.items(), other["metadata"]["name"]
    strategy = dep["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    # the HorizontalPodAutoscaler: the guide's `kubectl autoscale` object, on this Deployment
    hpa = find("HorizontalPodAutoscaler", NAME)
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": dep["apiVersion"], "kind": "Deployment", "name": dep["metadata"]["name"],
    }  # fmt: skip
    assert "replicas" not in dep["spec"], "the autoscaler owns the replica count"
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    (metric,) = spec["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    # the ConfigMap's informational scaling section says the same
    assert cfg.scaling.min_instances == spec["minReplicas"]
    assert cfg.scaling.max_instances == spec["maxReplicas"]
    assert cfg.scaling.target_cpu_utilization == 70
    assert cfg.service_discovery.backend == "kubernetes"
    # no Service here could inject a variable aiosrv reads, even with links on
    for svc in [d for d in all_documents() if d["kind"] == "Service"]:
        clash = service_link_names(svc["metadata"]["name"], svc["spec"]["ports"]) & set(ENV_VARS)
        assert not clash, (svc["metadata"]["name"], clash)


def test_redis_is_the_one_the_config_names(tmp_path: Path) -> None:
    cfg = loaded(tmp_path)
    svc = find("Service", cfg.redis.host)
    dep = find("Deployment", svc["metadata"]["name"])
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    (redis,) = dep["spec"]["template"]["spec"]["containers"]
    (port,) = svc["spec"]["ports"]
    assert port["port"] == cfg.redis.port
    assert resolve(port["targetPort"], redis) == cfg.redis.port
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    # the password is the server's REDIS_PASSWORD, from the same Secret key
    server_ref = secret_refs(container())["REDIS_PASSWORD"]
    redis_ref = secret_refs(redis)["REDIS_PASSWORD"]
    assert redis_ref == server_ref and not server_ref.get("optional", False)
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert dep["spec"]["template"]["spec"]["enableServiceLinks"] is False
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True
    data = args[args.index("--dir") + 1]
    assert data in {m["mountPath"] for m in redis["volumeMounts"]}


# --------------------------------------------------------------------------- for real


def get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as r:
        return int(r.status)


@pytest.fixture
def redis_for_the_pod() -> Iterator[RedisServer]:
    """A real redis-server that wants the Secret's (dummy) redis password."""
    password = secret_refs(container())["REDIS_PASSWORD"]["key"]
    with RedisServer(password=dummy(password)) as server:
        yield server


def test_serve_as_deployed(tmp_path: Path, redis_for_the_pod: RedisServer) -> None:
    redis = redis_for_the_pod
    config = write_config(tmp_path)
    app = tmp_path / "app"  # the image's WORKDIR
    (app / "logs").mkdir(parents=True)
    cfg = loaded(tmp_path)
    assert cfg.broker.engine == "redis"
    c = container()
    # the container's environment; what cannot hold here moves to loopback
    ws, api, metrics = free_ports(3)
    env = clean_env(**container_env())
    env.update(
        {
            CONFIG_PATH_ENV: str(config),
            "WEBSOCKET_HOST": "127.0.0.1", "WEBSOCKET_PORT": str(ws),
            "API_HOST": "127.0.0.1", "API_PORT": str(api), "METRICS_PORT": str(metrics),
            "REDIS_HOST": redis.host, "REDIS_PORT": str(redis.port),
        }
    )  # fmt: skip
    command = image_command()
    assert command[0] == "aiosrv"
    server = ServerProcess(command[1:], app, env)
    try:
        server.wait_ready(timeout=20)
        assert "broker=redis" in server.ready.string  # type: ignore[union-attr]
        assert f"ws://127.0.0.1:{ws}/" in server.ready.string  # type: ignore[union-attr]
        for probe in ("readinessProbe", "livenessProbe"):
            path = c[probe]["httpGet"]["path"]
            assert get(f"http://127.0.0.1:{api}{path}") == 200, probe
        # scraped where the annotations say
        annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
        assert get(f"http://127.0.0.1:{metrics}{annotations['prometheus.io/path']}") == 200
        # two clients with the Secret's static token: the drain spreads their
        # closes over shutdown.drain_window (one client would be closed at once)
        token = dummy(secret_refs(c)["AUTH_TOKEN"]["key"])
        clients = [
            websocket.create_connection(
                f"ws://127.0.0.1:{ws}{cfg.websocket.paths[0]}",
                header=[f"Authorization: Bearer {token}"],
                timeout=5,
                class_=ClientWebSocket,
            )
            for _ in range(2)
        ]
        # SIGTERM, as the kubelet sends it once preStop is over
        budget = pod_spec()["terminationGracePeriodSeconds"] - prestop_seconds()

        def closed(client: websocket.WebSocket) -> tuple[int, float]:
            client.settimeout(budget)
            while True:
                opcode, data = client.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return int.from_bytes(data[:2], "big"), time.monotonic() - started

        try:
            with ThreadPoolExecutor(len(clients)) as pool:
                started = time.monotonic()
                server.send(signal.SIGTERM)
                results = list(pool.map(closed, clients))
        finally:
            for client in clients:
                client.close()
        assert [code for code, _ in results] == [1001] * len(clients), results
        last = max(after for _, after in results)
        window = cfg.shutdown.drain_window
        assert window / len(clients) <= last <= window + 2, results
        assert server.wait_exit(timeout=budget) == 0, server.stderr
        took = time.monotonic() - started
        assert took < budget, took
        assert took <= cfg.shutdown.grace_period + 5, took
        assert "Traceback" not in server.stderr, server.stderr
        assert "aiosrv stopped" in server.stderr, server.stderr
    finally:
        server.kill()
