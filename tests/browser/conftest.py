from tests.server.conftest import ws_client  # noqa: F401  (shared fixture)
