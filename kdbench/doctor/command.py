"""`kdbench doctor [--device DEV] [--quick]`: is this machine ready to run kdbench?

One line per check, ✓ or ✗, with a one-line fix under each ✗; then a summary line; then, as
the last line of standard output, everything as one JSON object::

    {"kdbench": "0.1.0", "device": "cpu", "device_name": "...", "quick": true, "ok": false,
     "can_train": true, "exit_code": 0, "seconds": 80.1, "versions": {...},
     "checks": [{"name": "python", "ok": true, "detail": "...", "fix": null, "seconds": 0.0}, ...]}

`ok` says that every check passed. Missing data, teachers or extras fail their checks without
being errors: the exit code is 1 only when the device can't train (a critical check failed:
the device's training step, or with --quick the fp32 cohort), and 2 for a --device this
machine doesn't have (the usual one-line error). The checks themselves are in
`doctor_checks` (software, device), `doctor_disk` (data, teachers, results folder, extras)
and `doctor_quick` (--quick: training).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from rich.text import Text

from kdbench import __version__, data
from kdbench.core import devices
from kdbench.runs import environment as provenance
from kdbench.train import determinism
from kdbench.core.console import console
from kdbench.doctor.checks import (BUG_FIX, Check, compile_toolchain_check, device_check, failed, one_line,
                                   precision_checks, version_checks, versions)
from kdbench.doctor.installed import data_checks, extra_checks, results_check, teacher_checks
from kdbench.doctor.quick import QUICK, TINY, Scale, quick_checks
from kdbench.errors import KdbenchError

#: The keys of the JSON summary, and of each of its checks.
SUMMARY_KEYS = ("kdbench", "device", "device_name", "quick", "ok", "can_train", "exit_code", "seconds", "versions",
                "checks")
CHECK_KEYS = ("name", "ok", "detail", "fix", "seconds")
SCALES = {"quick": QUICK, "tiny": TINY}


@dataclass
class Report:
    """The checks of one `kdbench doctor` run."""

    device: torch.device
    quick: bool
    checks: list[Check]
    seconds: float
    versions: dict[str, Any]
    device_name: str | None = None

    @property
    def can_train(self) -> bool:
        """No critical check failed."""
        return not any(c.critical and not c.ok for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0, or 1 when the device can't train."""
        return 0 if self.can_train else 1

    def to_json(self) -> dict[str, Any]:
        """The summary printed as the last line."""
        return {"kdbench": __version__, "device": str(self.device), "device_name": self.device_name,
                "quick": self.quick, "ok": all(c.ok for c in self.checks), "can_train": self.can_train,
                "exit_code": self.exit_code, "seconds": round(self.seconds, 1), "versions": self.versions,
                "checks": [c.to_json() for c in self.checks]}


def _collect(name: str, produce: Iterator[Check], show: Callable[[Check], None]) -> list[Check]:
    """Run one group of checks, timing each; an unexpected exception becomes a failed check."""
    out, last = [], time.perf_counter()
    try:
        for check in produce:
            now = time.perf_counter()
            check.seconds, last = now - last, now
            out.append(check)
            show(check)
    except Exception as exc:  # noqa: BLE001 -- a doctor reports, it does not crash
        check = failed(name, f"the check itself failed: {one_line(exc)}", BUG_FIX)
        check.seconds = time.perf_counter() - last
        out.append(check)
        show(check)
    return out


def run(device: torch.device, *, quick: bool, data_root: Path, data_source: str, results: Path,
        scale: Scale = QUICK, precision: str | None = None,
        show: Callable[[Check], None] = lambda check: None) -> Report:
    """Every check on `device` (with `quick`, the training checks too, at `scale`); `show` gets each as it ends.

    `precision` replaces the reduced precision --quick trains in (bf16, or fp16 on a GPU without bf16).
    """
    started = time.perf_counter()
    checks = _collect("python", version_checks(), show)
    checks += _collect("device", device_check(device), show)
    can_train = all(c.ok for c in checks if c.critical)
    groups: list[tuple[str, Iterator[Check]]] = [("bf16", precision_checks(device))]
    if not quick:
        groups.append(("compile", compile_toolchain_check(device)))
    groups += [("data root", data_checks(data_root, data_source)), ("teachers", teacher_checks(data_root)),
               ("results", results_check(results)), ("extras", extra_checks())]
    for name, produce in groups:
        checks += _collect(name, produce, show)
    if quick:
        with tempfile.TemporaryDirectory(prefix="kdbench-doctor-") as workdir:
            for name, produce in quick_checks(device, scale, Path(workdir), precision, can_train):
                checks += _collect(name, produce, show)
    try:
        env = provenance.environment(device)
        info, name = versions(env), env["device_name"]
    except Exception:  # noqa: BLE001 -- a broken device: the device check says why
        info, name = versions(provenance.environment("cpu")), None
    return Report(device, quick, checks, time.perf_counter() - started, info, name)


# ----------------------------------------------------------------------------- output


class _Printer:
    """Check lines: coloured marks on a terminal (rich), plain text otherwise; never wrapped."""

    NAME_WIDTH = 19

    def __init__(self) -> None:
        self.console = console()
        encoding = getattr(sys.stdout, "encoding", None) or "ascii"
        try:
            "✓✗→×".encode(encoding)
            self.unicode = True
        except (UnicodeEncodeError, LookupError):
            self.unicode = False
        self.marks = ("✓", "✗") if self.unicode else ("+", "x")

    def line(self, text: str | Text) -> None:
        self.console.print(text, soft_wrap=True, markup=False, emoji=False, highlight=False)

    def check(self, check: Check) -> None:
        mark = self.marks[0] if check.ok else self.marks[1]
        self.line(Text.assemble((mark, "bold green" if check.ok else "bold red"), " ",
                                (check.name.ljust(self.NAME_WIDTH), "bold"), " ", check.detail))
        if not check.ok:
            self.line(Text.assemble("    fix: ", (check.fix or "", "yellow")))

    def summary(self, report: Report) -> None:
        bad = sum(not c.ok for c in report.checks)
        verdict = ("the device can train (exit code 0)" if report.can_train
                   else "the device can't train (exit code 1)")
        self.line(f"{len(report.checks)} checks in {report.seconds:.0f} s: {len(report.checks) - bad} "
                  f"{self.marks[0]}, {bad} {self.marks[1]}; {verdict}")
        # The last line: plain print, so no console width or style can touch it.
        sys.stdout.flush()
        print(json.dumps(report.to_json(), ensure_ascii=not self.unicode), flush=True)


def _data_source(cli_value: str | None) -> str:
    if cli_value:
        return "from --data-dir"
    if os.environ.get(data.ENV_ROOT):
        return f"from ${data.ENV_ROOT}"
    return f"the default; --data-dir or ${data.ENV_ROOT} set another"


def cli_doctor(args: argparse.Namespace) -> int:
    """The `kdbench doctor` subcommand."""
    device = devices.parse(args.device)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise KdbenchError(f"--device {args.device}: this machine has {torch.cuda.device_count()} GPU(s), "
                           f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if args.quick and device.type == "cuda" and not torch.cuda.is_initialized():
        # The resume check runs in deterministic mode, and cuBLAS reads this once, when CUDA starts.
        if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in determinism.CUBLAS_DETERMINISTIC_CONFIGS:
            os.environ.update(determinism.DETERMINISTIC_ENV)
    printer = _Printer()
    printer.line(f"kdbench doctor {__version__} on {device}"
                 + (" with the quick training checks (a few minutes)" if args.quick else ""))
    report = run(device, quick=args.quick, data_root=data.resolve_root(args.data_dir, None),
                 data_source=_data_source(args.data_dir), results=Path(args.results_dir),
                 scale=SCALES[args.scale], show=printer.check)
    printer.summary(report)
    return report.exit_code
