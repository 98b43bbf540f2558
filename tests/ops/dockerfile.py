"""The Dockerfile read as Docker reads it, for the tests that check it
(tests/ops/test_container.py interprets it; tests/ops/test_k8s.py checks the
Deployment against its final stage). Only what our Dockerfile uses is
supported; anything else fails with a message saying what to teach."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Instruction:
    line: int
    kind: str
    args: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines inside a continuation too
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        joined = " ".join(parts)
        parts = []
        kind, _, args = joined.partition(" ")
        out.append(Instruction(start, kind.upper(), args.strip()))
    assert not parts, "the Dockerfile ends in a continuation line"
    return out


_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_]\w*)(?P<rest>[^}]*)\}|(?P<plain>[A-Za-z_]\w*))")


def expand(text: str, variables: dict[str, str]) -> str:
    """Docker's ``$VAR`` / ``${VAR}`` expansion (an unset variable is empty)."""

    def one(m: re.Match[str]) -> str:
        assert not m["rest"], f"expansion {m[0]!r} is not supported here: teach expand()"
        return variables.get(m["braced"] or m["plain"], "")

    return _VAR.sub(one, text)


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@dataclass
class Healthcheck:
    options: dict[str, str]
    argv: list[str]

    def seconds(self, name: str) -> float:
        value = self.options[name]
        assert value.endswith("s"), value
        return float(value[:-1])


def parse_healthcheck(args: str) -> Healthcheck:
    options: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        rest = rest.strip()
    kind, _, command = rest.partition(" ")
    assert kind == "CMD", f"HEALTHCHECK must be CMD [...] (exec form): {args}"
    return Healthcheck(options, exec_form(command.strip()))


def env_pairs(ins: Instruction) -> list[tuple[str, str]]:
    """``ENV NAME=value ...`` as (name, raw value) pairs, values unexpanded."""
    assert ins.kind == "ENV", ins
    assert "'" not in ins.args, "single quotes in ENV are not supported here"
    pairs = []
    for word in shlex.split(ins.args):
        name, eq, value = word.partition("=")
        assert eq, f"line {ins.line}: ENV NAME=value form only"
        pairs.append((name, value))
    return pairs


def final_stage(path: Path) -> list[Instruction]:
    """The instructions of the Dockerfile's last stage, from its FROM on."""
    found = instructions(path.read_text())
    last_from = max(i for i, ins in enumerate(found) if ins.kind == "FROM")
    return found[last_from:]
