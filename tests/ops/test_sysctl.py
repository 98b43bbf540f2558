"""sysctl/apply.sh and sysctl/check.sh against a fake root.

Every run that could change something gets ``--root`` (a temporary tree
standing in for /proc/sys and /etc): nothing here touches this machine's
kernel settings or /etc. The tree starts with a stock kernel's values.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSCTL = REPO / "sysctl"
PROFILES = SYSCTL / "profiles"

#: a stock kernel (5.x/6.x) with 4 GiB of memory
STOCK = {
    "fs/file-max": "387000",
    "fs/nr_open": "1048576",
    "net/core/somaxconn": "4096",
    "net/ipv4/tcp_max_syn_backlog": "512",
    "net/core/netdev_max_backlog": "1000",
    "net/ipv4/ip_local_port_range": "32768\t60999",
    "net/ipv4/tcp_rmem": "4096\t131072\t6291456",
    "net/ipv4/tcp_wmem": "4096\t16384\t4194304",
    "net/core/rmem_max": "212992",
    "net/core/wmem_max": "212992",
    "net/ipv4/tcp_fin_timeout": "60",
    "net/ipv4/tcp_tw_reuse": "2",
}
KEYS = [rel.replace("/", ".") for rel in STOCK]


def make_root(tmp_path: Path, values: dict[str, str] = STOCK) -> Path:
    root = tmp_path / "root"
    for rel, value in values.items():
        f = root / "proc/sys" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(value + "\n")
    (root / "etc/security").mkdir(parents=True)
    (root / "etc/security/limits.conf").write_text("# stock\n#*  soft  core  0\n")
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def run(
    script: str, *args: str, root: Path, preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SYSCTL_ROOT"}
    return subprocess.run(
        ["bash", str(SYSCTL / script), "--root", str(root), *args],
        env=env, capture_output=True, text=True, timeout=30, preexec_fn=preexec_fn,
    )  # fmt: skip


def hard_nofile() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)


def soft_nofile(value: int | None) -> Callable[[], None]:
    """preexec_fn: the child's soft nofile limit at ``value`` (None: its hard limit)."""

    def set_it() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if value is None else value, hard))

    return set_it


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    """The 10k profile with a nofile limit this test process can reach (its
    hard limit, 65536 at most), so check.sh's shell can satisfy it."""
    conf = tmp_path / "test.conf"
    shutil.copy(PROFILES / "10k.conf", conf)
    n = hard_nofile()
    (tmp_path / "test.limits").write_text(f"*  soft  nofile  {n}\n*  hard  nofile  {n}\n")
    return conf


def test_profiles_are_sysctl_d_files_with_a_reason_per_setting_and_a_nofile_limit() -> None:
    for name in ("10k", "100k"):
        lines = (PROFILES / f"{name}.conf").read_text().splitlines()
        settings = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
        assert [lines[i].split(" = ")[0] for i in settings] == KEYS, name
        for i in settings:
            assert re.fullmatch(r"[a-z0-9_.-]+ = [0-9 ]+", lines[i]), lines[i]
            assert lines[i - 1].startswith("# "), f"{name}: no reason above {lines[i]}"
        limits = (PROFILES / f"{name}.limits").read_text()
        assert re.search(r"^\*\s+soft\s+nofile\s+\d+$", limits, re.M)
        assert re.search(r"^\*\s+hard\s+nofile\s+\d+$", limits, re.M)


def test_dry_run_prints_each_change_and_what_is_fine_and_changes_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    before = snapshot(root)
    result = run("apply.sh", "--dry-run", root=root)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "change net.core.somaxconn: 4096 -> 65535" in out
    assert "change net.ipv4.ip_local_port_range: 32768 60999 -> 10240 65535" in out
    assert "change net.ipv4.tcp_wmem: 4096 16384 4194304 -> 4096 65536 16777216" in out
    assert "change net.ipv4.tcp_fin_timeout: 60 -> 15" in out
    # already fine: kept (a larger file-max or tcp_rmem default is not lowered)
    assert "ok fs.file-max: 387000" in out
    assert "ok net.ipv4.tcp_rmem: 4096 131072 6291456" in out
    for key in KEYS:
        assert re.search(rf"^(ok|change) {re.escape(key)}: ", out, re.M), key
    assert "dry run: nothing changed" in out
    assert snapshot(root) == before


def test_apply_into_a_fake_root_makes_check_pass_and_again_changes_nothing(
    tmp_path: Path, profile: Path
) -> None:
    root = make_root(tmp_path)
    # before: LOW, naming somaxconn and nofile (the shell's and new sessions')
    before = run("check.sh", "--profile", str(profile), root=root, preexec_fn=soft_nofile(256))
    assert before.returncode == 1, before.stdout + before.stderr
    assert re.search(r"^LOW net\.core\.somaxconn: 4096 \(wanted >= 65535\)$", before.stdout, re.M)
    assert re.search(r"^LOW nofile soft \(this shell\): 256 ", before.stdout, re.M)
    assert re.search(r"^LOW nofile soft \(limits\.d, new sessions\): not set", before.stdout, re.M)

    first = run("apply.sh", "--profile", str(profile), root=root)
    assert first.returncode == 0, first.stderr
    assert "set net.core.somaxconn = 65535" in first.stdout
    conf = (root / "etc/sysctl.d/60-aiosrv.conf").read_text()
    assert "net.core.somaxconn = 65535\n" in conf
    assert "fs.file-max = 387000\n" in conf  # the host's larger value, kept
    assert (root / "proc/sys/net/core/somaxconn").read_text().strip() == "65535"
    assert (root / "proc/sys/net/ipv4/ip_local_port_range").read_text().strip() == "10240 65535"
    limits = (root / "etc/security/limits.d/60-aiosrv.conf").read_text()
    assert f"*  hard  nofile  {hard_nofile()}" in limits

    # after (a new session: the soft limit at the hard one): every line OK
    after = run("check.sh", "--profile", str(profile), root=root, preexec_fn=soft_nofile(None))
    assert after.returncode == 0, after.stdout + after.stderr
    assert "LOW" not in after.stdout
    assert re.search(r"^OK  net\.core\.somaxconn: 65535 ", after.stdout, re.M)
    assert re.search(r"^OK  nofile hard \(limits\.d, new sessions\): ", after.stdout, re.M)

    state = snapshot(root)
    again = run("apply.sh", "--profile", str(profile), root=root)
    assert again.returncode == 0, again.stderr
    assert not re.search(r"^(change|set|wrote) ", again.stdout, re.M), again.stdout
    assert "kernel settings: nothing to change" in again.stdout
    assert again.stdout.count(": unchanged") == 2
    assert snapshot(root) == state


def test_check_names_every_setting_and_compares_ranges_and_triples(tmp_path: Path) -> None:
    values = dict(STOCK)
    values["net/ipv4/ip_local_port_range"] = "1024 65535"  # wider than wanted: OK
    values["net/ipv4/tcp_rmem"] = "4096 87380 1048576"  # max below: LOW
    values["net/ipv4/tcp_fin_timeout"] = "10"  # shorter than wanted: OK
    root = make_root(tmp_path, values)
    result = run("check.sh", "--profile", "100k", root=root)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    for key in KEYS:
        assert any(re.match(rf"(OK |LOW) {re.escape(key)}: ", line) for line in lines), key
    for who in ("this shell", "limits.d, new sessions"):
        for kind in ("soft", "hard"):
            assert any(f"nofile {kind} ({who}): " in line for line in lines), (kind, who)
    assert "OK  net.ipv4.ip_local_port_range: 1024 65535 (wanted covering 1024 65535)" in lines
    assert "LOW net.ipv4.tcp_rmem: 4096 87380 1048576 (wanted each >= 4096 87380 6291456)" in lines
    assert "OK  net.ipv4.tcp_fin_timeout: 10 (wanted <= 10)" in lines
    assert "LOW net.ipv4.tcp_tw_reuse: 2 (wanted = 1)" in lines


def test_check_reads_the_nofile_limits_of_a_process(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    proc = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: resource.setrlimit(
        resource.RLIMIT_NOFILE, (300, 400)))  # fmt: skip
    try:
        result = run("check.sh", "--pid", str(proc.pid), root=root)
    finally:
        proc.kill()
        proc.wait()
    assert result.returncode == 1
    assert f"LOW nofile soft (pid {proc.pid}): 300 (wanted >= 65536)" in result.stdout
    assert f"LOW nofile hard (pid {proc.pid}): 400 (wanted >= 65536)" in result.stdout


def test_sysctl_root_in_the_environment_does_what_root_does(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    result = subprocess.run(
        ["bash", str(SYSCTL / "check.sh")], env={**os.environ, "SYSCTL_ROOT": str(root)},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "LOW net.core.somaxconn: 4096 (wanted >= 65535)" in result.stdout


def test_a_real_apply_needs_root(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SYSCTL_ROOT"}

    def nobody() -> None:
        if os.getuid() == 0:  # as an unprivileged user, whatever runs the suite
            os.setgid(65534)
            os.setuid(65534)

    with tempfile.TemporaryDirectory() as where:  # a copy user nobody can read
        os.chmod(where, 0o755)
        copy = Path(where) / "sysctl"
        shutil.copytree(SYSCTL, copy)
        result = subprocess.run(
            ["bash", str(copy / "apply.sh")], env=env, capture_output=True, text=True,
            timeout=30, preexec_fn=nobody, cwd=where,
        )  # fmt: skip
    assert result.returncode == 2
    assert "needs root" in result.stderr
    assert result.stdout == ""


def test_unknown_arguments_and_profiles_are_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    assert "no such profile" in run("check.sh", "--profile", "5k", root=root).stderr
    assert run("apply.sh", "--bogus", root=root).returncode == 2
    assert "usage: sysctl/apply.sh" in run("apply.sh", "--help", root=root).stdout


def test_the_scripts_parse_and_pass_shellcheck() -> None:
    scripts = [str(SYSCTL / name) for name in ("apply.sh", "check.sh", "lib.sh")]
    for script in scripts:
        assert subprocess.run(["bash", "-n", script]).returncode == 0, script
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed: run `make system-deps` (scripts/system-deps.sh)")
    result = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
