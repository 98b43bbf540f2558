"""aiosrv: a real-time WebSocket data push server.

Use it as a program (``aiosrv serve``) or as a library::

    from aiosrv import SERVER, create_app, load_config

    app = create_app(load_config())          # aiohttp Application
    ...
    seq = (await app[SERVER].publish("prices", {"BTC": 1}, key="BTC")).seq
"""

__version__ = "0.1.0"

from .app import REGISTRY, SERVER, create_app
from .broker import Publication
from .config import Config, ConfigError, default_config, load_config
from .server import Server

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
