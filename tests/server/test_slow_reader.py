"""Hostile input: a client that subscribes and never reads, among 200 that do.

A short run of ``tests/slow_reader.py`` (``bench/slow_reader.py`` runs 2,000
subscribers and reports latency): ``aiosrv serve`` as a child process with
``SEND_BUFFER_LIMIT=64KiB``, 200 subscribers in a helper process, a publisher
process at a fixed rate, then one client that subscribes and never reads.
The server must close it with 1013 (slow consumer) while every normal
subscriber gets every message, in order. No latency assertion here.

Before anything reaches the server's send buffer the kernel's socket buffers
fill (on loopback the server socket's send buffer is autotuned to megabytes),
so the messages are large (4,000 B at 100/s) for the close to come within
seconds.
"""

from __future__ import annotations

from tests.slow_reader import SlowOptions, run_slow_reader


async def test_never_reader_is_closed_with_1013_and_the_others_miss_nothing() -> None:
    report = await run_slow_reader(
        SlowOptions(
            subscribers=200,
            slow=1,
            rate=100.0,
            size=4000,
            phase_seconds=1.5,
            close_timeout=20.0,
        )
    )
    text = "\n".join(report.lines())
    print(text)
    assert not report.failures, text
    assert report.slow_close_codes == [1013], text
    assert report.slow_close_reasons == ["slow consumer: send buffer limit"], text
    assert report.slow_consumer_closes == 1
    subs = report.subscribers
    assert subs["subscribers"] == 200 and subs["all_received"], text
    assert report.publisher["contiguous"] and report.publisher["last_seq"] > 0, text
    assert subs["received_counts"] == {str(report.publisher["last_seq"]): 200}, text
