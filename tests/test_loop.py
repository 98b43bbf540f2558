"""The async tests run on the event loop that AIOSRV_TEST_LOOP names."""

from __future__ import annotations

import asyncio

from tests.conftest import TEST_LOOP


async def test_tests_run_on_the_chosen_loop() -> None:
    loop = asyncio.get_running_loop()
    on_uvloop = type(loop).__module__.split(".")[0] == "uvloop"
    assert on_uvloop == (TEST_LOOP == "uvloop"), type(loop)
