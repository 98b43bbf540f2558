"""Hostile input: a short run of the socket-level fuzzer (``tests/fuzzing.py``).

The same code as ``bench/fuzz_frames.py`` (100,000 inputs), here with 3,000
and a fixed seed: ``aiosrv serve`` as a child process on free loopback ports,
one normal subscriber with a steady publisher, 8 raw clients sending random
and mutated frames, protocol junk and broken handshakes. The invariants are
the fuzzer's (:meth:`tests.fuzzing.FuzzReport.check`): the server alive and
healthy, every published message received in order, only the contract's
close codes and never 1011, no stalled input, bounded RSS, no traceback in
its log, a clean SIGTERM.

The bugs its first full run found (a deeply nested field's error message
recursing, deep payloads taking a seq and answering 500 or 1011, aiohttp's
tracebacks for malformed requests) are fixed and pinned by
``test_hostile_input.py``; ``FuzzOptions.known_bugs`` can list findings to
tolerate while a new one is being fixed, and is empty.
"""

from __future__ import annotations

from tests.fuzzing import CONTRACT_CLOSE_CODES, FuzzOptions, iter_lines, run_fuzz

SEED = 20261202
INPUTS = 3000

async def test_fuzz_breaks_no_invariant() -> None:
    report = await run_fuzz(
        FuzzOptions(
            inputs=INPUTS,
            seed=SEED,
            conns=8,
            rate=50.0,
            stall_timeout=8.0,
        )
    )
    text = "\n".join(iter_lines(report))
    print(text)
    assert not report.failures, text
    assert report.inputs_sent == INPUTS
    # the run did what it is for: the subscriber saw traffic, the server
    # refused framing and UTF-8 errors and answered valid requests
    assert len(report.published) >= 10, text
    assert report.received == report.published
    assert report.server_close_codes[1002] > 0 and report.server_close_codes[1007] > 0, text
    assert set(report.server_close_codes) <= CONTRACT_CLOSE_CODES, text
    for reply in ("pong", "ack", "history", "error:invalid_json", "error:invalid_message"):
        assert report.outcomes[reply] > 0, f"no {reply!r} outcome\n{text}"
