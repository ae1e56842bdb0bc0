"""Every kdbench command the README and docs/ show exists as written, and the cheap ones run.

Commands are read from the pages' shell blocks and from inline code that starts with
`kdbench `; each is parsed by kdbench's own argument parser (a flag that no longer exists
fails here), and each grid file it names must load. Placeholders (`GRID.yaml`, `$precision`)
stand for a shipped grid and a precision.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.cli import build_parser
from kdbench.grid import config

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PLACEHOLDERS = {"GRID.yaml": "experiments/fashion_mnist.yaml", "$precision": "fp32", "GRID": "experiments/fashion_mnist.yaml"}


def _clean(line: str) -> str:
    line = line.split("#")[0].strip().split("&&")[-1].strip()
    line = re.sub(r"^(\.venv/bin/|python -m )", "", line)
    for placeholder, value in PLACEHOLDERS.items():
        line = line.replace(placeholder, value)
    return line


def shown_commands() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(page, command) for every kdbench command in the pages' shell blocks, and for every
    inline mention (`kdbench run --dry-run`, `kdbench run/status/verify --set k=v`)."""
    blocks, inline = [], []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.S):
            blocks += [(page.name, c) for c in map(_clean, block.splitlines()) if c.startswith("kdbench ")]
        inline += [(page.name, _clean(c)) for c in re.findall(r"`(kdbench [^`]+)`", text)]
    return blocks, inline


BLOCKS, INLINE = shown_commands()


def subcommand_options() -> dict[str, set[str]]:
    """Each subcommand (`teachers fetch` as `teachers`) → its option strings."""
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}


def test_the_pages_show_the_main_commands():
    shown = {command.split()[1] for _, command in BLOCKS}
    assert {"run", "status", "report", "doctor", "teachers", "bench"} <= shown


@pytest.mark.parametrize("page,command", BLOCKS, ids=[f"{p}: {c}" for p, c in BLOCKS])
def test_every_command_in_a_shell_block_parses_and_names_a_grid_that_loads(page, command):
    argv = shlex.split(command)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{page}: `{command}` does not parse (exit {exc.code})")
    for arg in argv:
        if arg.endswith(".yaml"):
            config.load_grid(REPO / arg)


def test_every_inline_command_names_subcommands_and_options_that_exist():
    options = subcommand_options()
    problems = []
    for page, command in INLINE:
        words = command.replace("|", " ").split()
        for sub in words[1].split("/"):
            if sub not in options:
                problems.append(f"{page}: `{command}`: no subcommand {sub}")
                continue
            for flag in (w.split("=")[0].strip("[]") for w in words[2:] if w.lstrip("[").startswith("--")):
                if flag not in options[sub]:
                    problems.append(f"{page}: `{command}`: {sub} has no option {flag}")
    assert not problems, "\n".join(problems)


def kdbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdbench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_the_cheap_shown_commands_run(tmp_path):
    listed = kdbench("list", "methods", cwd=REPO)
    assert listed.returncode == 0 and "luminet" in listed.stdout, listed.stderr
    doctor = kdbench("doctor", "--device", "cpu", cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stderr
    dry = kdbench("run", str(REPO / "experiments" / "fashion_mnist.yaml"), "--dry-run", "--device", "cpu",
                  "--results-dir", str(tmp_path / "results"), cwd=REPO)
    assert dry.returncode == 0, dry.stderr
    assert "dkd: warmup 20 → 1 for 7 epochs" in dry.stdout
