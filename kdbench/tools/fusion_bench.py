"""The speed modes of a cohort step (`kdbench bench --cuda-graphs --fuse-students`) and a
per-layer microbenchmark of fused convolutions (`python -m kdbench.tools.fusion_bench`).

Modes, all on the real step (`kdbench.train.steps.EpochSteps`): `eager` (each member's step
in turn), `fused` (same-architecture members as one stacked model), `graphs` (the whole
step replayed as one CUDA graph) and `graphs+fused`.

The microbenchmark times, for every distinct convolution of an architecture at a batch, a
forward and backward of K members' convolutions three ways: K `separate` convolutions (the
unfused step), one `grouped` convolution on member-packed channels (HFTA; the
`grouped` backend of `kdbench.train.stacked`) and `vmap` over the members (the `vmap`
backend). The first convolution reads the shared image (K·C_out dense filters).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap

from kdbench import models
from kdbench.core import devices
from kdbench.train import graphs
from kdbench.train.precision import autocast, resolve
from kdbench.train.steps import EpochSteps
from kdbench.train.trainee import Trainee

#: The modes `measure_modes` knows, in the order `kdbench bench` prints them.
MODES = ("eager", "fused", "graphs", "graphs+fused")


def _raise(trainee: Trainee, exc: BaseException, step: int) -> None:
    raise exc


def measure_modes(setup: Any, modes: list[str], steps: int, warmup: int, device: torch.device,
                  backend: str | None = None, rounds: int = 3) -> dict[str, dict[str, Any]]:
    """Seconds per cohort step in each of `modes` on `setup` (`kdbench.tools.bench`'s random-data
    cohort: `trainees`, `options`, `images`, `targets`, `teacher_pass`, `teacher_views`).

    The modes take turns, `rounds` windows of `steps` steps each after their warm-up, and each
    keeps its fastest window: on a shared machine the others' load then weighs on every mode alike.
    """
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    counter = itertools.count(1)
    runners: dict[str, tuple[EpochSteps, Callable[[], None]]] = {}
    out: dict[str, dict[str, Any]] = {}
    for mode in modes:
        graph, fuse = mode.startswith("graphs"), "fused" in mode
        before = dict(graphs.STATS)
        epoch = EpochSteps(setup.trainees, epoch=30, device=device, options=setup.options,
                           teacher=lambda images: setup.teacher_pass(setup.teacher_views, setup.trainees),
                           fail=_raise, fuse=fuse, graph=graph, backend=backend)
        run = lambda epoch=epoch: epoch.run(next(counter), setup.images, setup.targets, None)  # noqa: E731
        for _ in range(warmup + (graphs.FIRST_WARMUP + 1 if graph else 0)):  # a graph's eager steps and capture too
            run()
        runners[mode] = (epoch, run)
        out[mode] = {"seconds": math.inf, "groups": [g.label for g in epoch.groups]}
        if graph:
            out[mode]["captured"] = graphs.STATS["captures"] > before.get("captures", 0) and \
                graphs.STATS["fallbacks"] == before.get("fallbacks", 0)
    for _ in range(rounds):
        for mode, (_, run) in runners.items():
            out[mode]["seconds"] = min(out[mode]["seconds"], devices.timed(run, device, steps))
    for epoch, _ in runners.values():
        epoch.finish()
    for trainee in setup.trainees:
        trainee.fused_with = 1
    return out


_LABELS = {"eager": "cohort, eager", "fused": "cohort, fused students", "graphs": "cohort, one CUDA graph",
           "graphs+fused": "cohort, one CUDA graph, fused students"}


def mode_results(setup: Any, result: dict[str, Any], *, cuda_graphs: bool, fuse_students: bool,
                 backend: str | None, steps: int, warmup: int) -> dict[str, dict[str, Any]]:
    """`kdbench bench`'s `modes`: the eager cohort and each asked mode, timed in turns: student
    images/s, speed-up over eager, FLOP/s and share of the matmul peak (from `result`'s)."""
    device = torch.device(result["device"])
    notes: list[str] = []
    modes = ["eager"] + (["fused"] if fuse_students else [])
    if cuda_graphs:
        reason = graphs.unsupported(device, result["precision"], result["compile"], False)
        if reason:
            notes.append(f"no CUDA graph: {reason}")
        else:
            modes += ["graphs", "graphs+fused"] if fuse_students else ["graphs"]
    images = result["cohort_size"] * result["batch_size"]
    flops_per_step = result["cohort_tflops"] * images / result["student_images_per_s"]  # TFLOP a step
    measured = measure_modes(setup, modes, steps, warmup, device, backend)
    eager_s = measured["eager"]["seconds"]
    out: dict[str, dict[str, Any]] = {}
    for mode, m in measured.items():
        row = {"label": _LABELS[mode], "seconds": m["seconds"], "student_images_per_s": images / m["seconds"],
               "speedup": eager_s / m["seconds"], "cohort_tflops": flops_per_step / m["seconds"],
               "groups": m["groups"], "notes": list(notes) if mode == "eager" else []}
        if "fused" in mode:
            row["notes"].append(f"fused groups: {', '.join(m['groups']) or 'none'}")
        if "gemm_peak_tflops" in result:
            row["share_of_gemm_peak"] = row["cohort_tflops"] / result["gemm_peak_tflops"]
        if "captured" in m:
            row["captured"] = m["captured"]
            if not m["captured"]:
                row["notes"].append("the capture failed: these steps ran eagerly")
        out[mode] = row
    return out


# ----------------------------------------------------------------------------- per layer


@dataclass(frozen=True)
class ConvShape:
    """A convolution of an architecture at a batch: channels, kernel, stride, groups, input size."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    groups: int
    height: int
    width: int
    first: bool  # reads the image that every member shares

    def label(self) -> str:
        g = f" g{self.groups}" if self.groups > 1 else ""
        return (f"{self.in_channels}→{self.out_channels} {self.kernel}x{self.kernel}/{self.stride}{g} "
                f"@{self.height}x{self.width}")


def conv_shapes(arch: str, num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> list[ConvShape]:
    """The distinct convolutions of `arch`, in the order of the forward."""
    model = models.build(arch, num_classes=num_classes, in_channels=in_channels).eval()
    seen: dict[ConvShape, None] = {}

    def hook(module: nn.Conv2d, inputs: tuple[Tensor, ...], _: Tensor) -> None:
        x = inputs[0]
        seen.setdefault(ConvShape(module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
                                  module.padding[0], module.groups, x.shape[2], x.shape[3], not seen), None)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, in_channels, image_size, image_size))
    for h in handles:
        h.remove()
    return list(seen)


def _conv_cases(s: ConvShape, members: int, batch: int, device: torch.device,
                fmt: torch.memory_format) -> dict[str, Callable[[], None]]:
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int, grad: bool = True) -> Tensor:
        t = torch.randn(*shape, generator=g).to(device)
        t = t.contiguous(memory_format=fmt) if t.dim() == 4 else t
        return t.requires_grad_(grad)

    cin, cout, k, groups = s.in_channels, s.out_channels, s.kernel, s.groups
    conv = dict(stride=s.stride, padding=s.padding)
    xs = [rand(batch, cin, s.height, s.width, grad=not s.first) for _ in range(1 if s.first else members)]
    ws = [rand(cout, cin // groups, k, k) for _ in range(members)]
    packed = xs[0] if s.first else rand(batch, members * cin, s.height, s.width)
    wg = rand(members * cout, cin // groups, k, k)
    xv = xs[0] if s.first else rand(members, batch, cin, s.height, s.width)
    wv = rand(members, cout, cin // groups, k, k)
    shared_groups = 1 if s.first and groups == 1 else groups * members
    if s.first and groups > 1:
        packed = packed.repeat(1, members, 1, 1)

    def backward(out: Tensor) -> None:
        out.backward(torch.ones_like(out))

    def separate() -> None:
        outs = [F.conv2d(xs[0 if s.first else i], w, None, groups=groups, **conv) for i, w in enumerate(ws)]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    def grouped() -> None:
        backward(F.conv2d(packed, wg, None, groups=shared_groups, **conv))

    def vmapped() -> None:
        one = lambda x, w: F.conv2d(x, w, None, groups=groups, **conv)  # noqa: E731
        backward(vmap(one, in_dims=(None if s.first else 0, 0))(xv, wv))

    return {"separate": separate, "grouped": grouped, "vmap": vmapped}


def layer_bench(arch: str, members: int, *, device: str | torch.device | None = None, precision: str = "fp32",
                channels_last: bool = False, batch: int = 64, image_size: int = 32, num_classes: int = 100,
                calls: int | None = None) -> list[dict[str, Any]]:
    """Per distinct convolution of `arch`: milliseconds of a forward and backward of `members`
    members' convolutions, `separate`, `grouped` and `vmap`, and which fused form is faster."""
    dev = devices.parse(None if device is None else str(device))
    precision = resolve(dev, precision)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    calls = calls or (10 if dev.type == "cuda" else 2)
    rows = []
    for shape in conv_shapes(arch, num_classes, image_size=image_size):
        cases = _conv_cases(shape, members, batch, dev, fmt)
        ms: dict[str, float] = {}
        for name, fn in cases.items():
            def run(fn: Callable[[], None] = fn) -> None:
                with autocast(dev, precision):
                    fn()
            ms[name] = 1e3 * devices.timed(run, dev, calls, warmup=2 if dev.type == "cpu" else 5,
                                           windows=2 if dev.type == "cpu" else 3)
        fused_pick = min(("grouped", "vmap"), key=ms.__getitem__)
        rows.append({"layer": shape.label(), **asdict(shape), **{f"{k}_ms": v for k, v in ms.items()},
                     "faster_fused": fused_pick, "fused_vs_separate": ms["separate"] / ms[fused_pick]})
    return rows


def layer_table(rows: list[dict[str, Any]]) -> str:
    """The rows of `layer_bench` as a Markdown table."""
    lines = ["| layer | separate ms | grouped ms | vmap ms | faster fused | separate ÷ fused |",
             "|---|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['separate_ms']:.2f} | {r['grouped_ms']:.2f} | {r['vmap_ms']:.2f} | "
                     f"{r['faster_fused']} | {r['fused_vs_separate']:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m kdbench.tools.fusion_bench`: the per-layer table (or JSON lines) of one architecture."""
    parser = argparse.ArgumentParser(prog="python -m kdbench.tools.fusion_bench", description=main.__doc__)
    parser.add_argument("--arch", default="resnet8x4")
    parser.add_argument("--members", type=int, default=14)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="one JSON object per layer")
    args = parser.parse_args(argv)
    rows = layer_bench(args.arch, args.members, device=args.device, precision=args.precision,
                       channels_last=args.channels_last, batch=args.batch_size, image_size=args.image_size,
                       calls=args.calls)
    if args.json:
        for r in rows:
            print(json.dumps({"arch": args.arch, "members": args.members, "precision": args.precision,
                              "channels_last": args.channels_last, **r}))
    else:
        print(f"{args.arch}, {args.members} members, batch {args.batch_size}, {args.precision}"
              f"{', channels-last' if args.channels_last else ''}: forward + backward per layer")
        print(layer_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
