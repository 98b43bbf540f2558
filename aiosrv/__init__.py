"""aiosrv: a real-time WebSocket data push server.

Use it as a program (``aiosrv serve``) or as a library::

    from aiosrv import SERVER, create_app, load_config

    app = create_app(load_config())          # aiohttp Application
    ...
    seq = (await app[SERVER].publish("prices", {"BTC": 1}, key="BTC")).seq

The public names are imported lazily (PEP 562): importing a sans-I/O part such
as ``aiosrv.protocol`` or ``aiosrv.fanout`` does not pull in aiohttp or asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .app import REGISTRY, SERVER, create_app
    from .broker import Publication
    from .config import Config, ConfigError, default_config, load_config
    from .server import Server

# public name -> submodule that defines it
_LAZY = {
    "REGISTRY": "app",
    "SERVER": "app",
    "create_app": "app",
    "Publication": "broker",
    "Config": "config",
    "ConfigError": "config",
    "default_config": "config",
    "load_config": "config",
    "Server": "server",
}

__all__ = [
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
