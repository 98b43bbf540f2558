"""Which fan-out core ``aiosrv.fanout`` picks, and that the sans-I/O modules stay
free of asyncio, aiohttp and redis. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

EXPECT_COMPILED = os.environ.get("AIOSRV_EXPECT_COMPILED", "").strip().lower() in {
    "1",
    "true",
    "yes",
}

SANS_IO_MODULES = [
    "aiosrv.protocol",
    "aiosrv._fanout_py",
    "aiosrv.fanout",
    "aiosrv.broker",
    "aiosrv.errors",
]
IO_MODULES = ["asyncio", "aiohttp", "redis"]

REPORT = """
import importlib.util, json
import aiosrv.fanout as f
from aiosrv import _fanout_py
try:
    available = importlib.util.find_spec("aiosrv._fanout_c") is not None
except ImportError:
    available = False
print(json.dumps({
    "implementation": f.IMPLEMENTATION,
    "module": f.FanOut.__module__,
    "pure": f.FanOut is _fanout_py.FanOut and f.Subscriber is _fanout_py.Subscriber
            and f.encode_frame is _fanout_py.encode_frame
            and f.encode_close is _fanout_py.encode_close,
    "compiled_available": available,
}))
"""

# Makes ``import aiosrv._fanout_c`` fail as it does when the extension is not built.
HIDE_EXTENSION = """
import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "aiosrv._fanout_c":
            raise ImportError("hidden by the test: no compiled core")
        return None
sys.meta_path.insert(0, _Hide())
"""


def run(code: str, **env_changes: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for name in ("AIOSRV_NO_EXTENSIONS", "AIOSRV_EXPECT_COMPILED"):
        env.pop(name, None)
    for name, value in env_changes.items():
        if value is not None:
            env[name] = value
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def report(code: str = "", **env_changes: str | None) -> dict:
    proc = run(code + REPORT, **env_changes)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("value", ["1", "true", "YES", " 1 "])
def test_no_extensions_forces_pure_python(value):
    got = report(AIOSRV_NO_EXTENSIONS=value)
    assert got["implementation"] == "pure-python"
    assert got["module"] == "aiosrv._fanout_py"
    assert got["pure"] is True


def test_default_picks_the_compiled_core():
    """Without AIOSRV_NO_EXTENSIONS the compiled core is used; when the test run has
    AIOSRV_EXPECT_COMPILED=1 (CI) a missing extension fails here."""
    got = report(AIOSRV_EXPECT_COMPILED="1" if EXPECT_COMPILED else None)
    if EXPECT_COMPILED or got["compiled_available"]:
        assert got["implementation"] == "compiled"
        assert got["module"] == "aiosrv._fanout_c"
        assert got["pure"] is False
    else:
        assert got["implementation"] == "pure-python"


def test_other_values_do_not_force_pure_python():
    got = report(AIOSRV_NO_EXTENSIONS="0")
    assert got["implementation"] == ("compiled" if got["compiled_available"] else "pure-python")


def test_missing_extension_falls_back_to_pure_python():
    got = report(HIDE_EXTENSION)
    assert got["implementation"] == "pure-python"
    assert got["pure"] is True


def test_missing_extension_is_an_import_error_when_expected():
    proc = run(HIDE_EXTENSION + "import aiosrv.fanout", AIOSRV_EXPECT_COMPILED="1")
    assert proc.returncode == 1
    assert "ImportError: hidden by the test: no compiled core" in proc.stderr


# A Python copy of the core named aiosrv._fanout_c (what a build that copies the
# .py source could leave behind) is found before the extension.
STRAY_PY_COPY = """
import os, shutil, tempfile
import aiosrv
stray = tempfile.mkdtemp()
shutil.copy(os.path.join(aiosrv.__path__[0], "_fanout_py.py"), os.path.join(stray, "_fanout_c.py"))
aiosrv.__path__.insert(0, stray)
"""


def test_a_python_copy_is_not_taken_for_the_compiled_core():
    got = report(STRAY_PY_COPY)
    assert got["implementation"] == "pure-python"
    assert got["module"] == "aiosrv._fanout_py"
    assert got["pure"] is True


def test_a_python_copy_is_an_import_error_when_compiled_is_expected():
    proc = run(STRAY_PY_COPY + "import aiosrv.fanout", AIOSRV_EXPECT_COMPILED="1")
    assert proc.returncode == 1
    assert "ImportError: aiosrv._fanout_c at " in proc.stderr
    assert "is not a compiled extension" in proc.stderr


def test_is_compiled_tells_source_from_extension():
    code = """
    import json, importlib
    from aiosrv.fanout import is_compiled
    from aiosrv import _fanout_py, _wire_py
    out = {"py": [is_compiled(_fanout_py), is_compiled(_wire_py)]}
    try:
        out["c"] = [is_compiled(importlib.import_module(m))
                    for m in ("aiosrv._fanout_c", "aiosrv._wire_c")]
    except ImportError:
        out["c"] = None
    print(json.dumps(out))
    """
    proc = run(code)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["py"] == [False, False]
    if EXPECT_COMPILED or got["c"] is not None:
        assert got["c"] == [True, True]


def test_no_extensions_wins_over_expect_compiled():
    got = report(HIDE_EXTENSION, AIOSRV_NO_EXTENSIONS="1", AIOSRV_EXPECT_COMPILED="1")
    assert got["implementation"] == "pure-python"


@pytest.mark.parametrize("no_extensions", ["1", None])
def test_sans_io_modules_import_no_io_library(no_extensions):
    code = f"""
    import json, sys
    for name in {SANS_IO_MODULES!r}:
        __import__(name)
    print(json.dumps(sorted(m for m in {IO_MODULES!r} if m in sys.modules)))
    """
    proc = run(code, AIOSRV_NO_EXTENSIONS=no_extensions)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_package_names_still_resolve():
    code = """
    import json, sys
    import aiosrv
    lazy = "asyncio" in sys.modules or "aiohttp" in sys.modules
    from aiosrv import (
        REGISTRY, SERVER, Config, ConfigError, Publication, Server, __version__,
        create_app, default_config, load_config,
    )
    from aiosrv.app import create_app as real_create_app
    from aiosrv.server import Server as RealServer
    print(json.dumps({
        "lazy": not lazy,
        "same": create_app is real_create_app and Server is RealServer,
        "version": __version__,
        "all": sorted(aiosrv.__all__),
    }))
    """
    proc = run(code)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["lazy"] is True
    assert got["same"] is True
    assert got["version"] == "0.1.0"
    assert got["all"] == sorted(
        [
            "REGISTRY",
            "SERVER",
            "Config",
            "ConfigError",
            "Publication",
            "Server",
            "__version__",
            "create_app",
            "default_config",
            "load_config",
        ]
    )
    proc = run("import aiosrv; aiosrv.no_such_name")
    assert "AttributeError: module 'aiosrv' has no attribute 'no_such_name'" in proc.stderr
