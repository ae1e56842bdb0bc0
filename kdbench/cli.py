"""The `kdbench` command line: run, status, verify, export, import, report, compare, list, bench, doctor,
teachers.

Every subcommand has `--help`. Errors a user can fix print as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from kdbench import __version__
from kdbench.errors import KdbenchError
from kdbench.report import options as report_options


def _add_methods_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--methods-dir", action="append", default=[], metavar="DIR",
        help="also import every method file in DIR (repeatable; adds to KDBENCH_METHODS_PATH)",
    )


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="change one key of the grid file (repeatable; values are YAML), e.g. --set schedule.epochs=5 "
        "--set methods.dkd.beta=2 --set options.log=[tensorboard]; results then go to GRID+set-HASH "
        "unless --set name=NAME is given",
    )


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", metavar="DIR",
        help="data root (default: $KDBENCH_DATA, then the grid's data.root, then ./data)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="kdbench",
        description="Benchmark logit knowledge distillation: train teacher-student grids, report honest tables.",
    )
    parser.add_argument("--version", action="version", version=f"kdbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run", help="train a grid (skips finished runs, resumes partial ones)",
        description="Train every run of a grid YAML. Finished runs are skipped and partial runs resume "
        "from their last epoch, so the same command can be re-run safely, from several processes or hosts at once.",
    )
    run.add_argument("grid", help="grid YAML file, e.g. experiments/cifar100_grid.yaml")
    run.add_argument("--results-dir", default="results", metavar="DIR", help="where run folders go (default: results)")
    _add_data_dir(run)
    run.add_argument(
        "--device", metavar="DEV",
        help="cpu, cuda or cuda:N; a comma-separated list (cuda:0,cuda:1) starts one worker per device "
        "(default: cuda when available, else cpu)",
    )
    run.add_argument("--dry-run", action="store_true", help="print the plan (runs, cohorts, status, time estimate) and exit")
    _add_set(run)
    run.add_argument(
        "--executor", choices=["local", "slurm"], default="local",
        help="local: train in this process; slurm: submit workers through submitit (needs kdbench[slurm])",
    )
    run.add_argument("--slurm-jobs", type=int, default=None, metavar="N",
                     help="with --executor slurm: how many worker jobs to submit (default: one per cohort)")
    run.add_argument("--slurm-partition", metavar="NAME", help="with --executor slurm: the partition")
    run.add_argument("--slurm-timeout-min", type=int, default=24 * 60, metavar="MIN",
                     help="with --executor slurm: time limit per job in minutes (default: 1440)")
    run.add_argument("--slurm-folder", metavar="DIR",
                     help="with --executor slurm: submitit log folder (default: RESULTS/GRID/slurm)")
    run.add_argument("--only", metavar="TEXT", help="train only runs whose pair, variant or run_id contains TEXT")
    run.add_argument("--retry-failed", action="store_true", help="train failed runs again from scratch")
    run.add_argument("--wait", action="store_true", help="with --executor slurm: wait for the jobs to finish")
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # child of a multi-device run
    run.add_argument("--log-prefix", default="", help=argparse.SUPPRESS)
    _add_methods_dir(run)

    status = sub.add_parser("status", help="show each run's state and its numbers so far",
                            description="Show each run's state (done, running, partial, failed, new) and its numbers so far.")
    status.add_argument("grid", nargs="?", help="grid YAML file or grid name (default: every grid in the results folder)")
    status.add_argument("--results-dir", default="results", metavar="DIR", help="results folder (default: results)")
    _add_set(status)
    _add_methods_dir(status)

    verify = sub.add_parser(
        "verify", help="check every run folder's record; say what `kdbench run` will do about each problem",
        description="Check every run folder of a grid: the records parse, the summary agrees with the metrics "
        "and the checkpoint, the config matches the run id, and the teacher's SHA-256 matches the recorded one. "
        "One line per problem, with what `kdbench run` will do about it; exit code 1 if there is any.",
    )
    verify.add_argument("grid", nargs="?", help="grid YAML file or grid name (default: every grid in the results folder)")
    verify.add_argument("--results-dir", default="results", metavar="DIR", help="results folder (default: results)")
    _add_data_dir(verify)
    _add_methods_dir(verify)
    _add_set(verify)

    export = sub.add_parser(
        "export", help="write a grid's finished runs to one bundle file, for another machine or person",
        description="Write a grid's finished runs (config.yaml, summary.json, metrics.jsonl; checkpoints with "
        "--checkpoints), its grid file, the teachers' SHA-256s and a manifest of every file's SHA-256 into one "
        "tar file that `kdbench import` adds to another results folder.",
    )
    export.add_argument("grid", help="grid YAML file or grid name")
    export.add_argument("--out", required=True, metavar="FILE.tar", help="the bundle to write (replaced if it exists)")
    export.add_argument("--checkpoints", action="store_true", help="also include each run's checkpoint.pt")
    export.add_argument("--results-dir", default="results", metavar="DIR", help="results folder (default: results)")
    _add_set(export)
    _add_methods_dir(export)

    bundle_import = sub.add_parser(
        "import", help="add the runs of a bundle written by `kdbench export` to a results folder",
        description="Check a bundle whole (format version, every file's SHA-256, no file outside the manifest, "
        "no link or path escaping its folder, finished runs), refuse it if a local run of the same id holds other "
        "files, then add its runs: `report` and `compare` read them and `run` skips them as done.",
    )
    bundle_import.add_argument("bundle", metavar="FILE.tar", help="a bundle written by `kdbench export`")
    bundle_import.add_argument("--results-dir", default="results", metavar="DIR",
                               help="results folder to add the runs to (default: results)")

    report = sub.add_parser(
        "report", help="comparison tables (Markdown, LaTeX, CSV) and plots",
        description="Aggregate run summaries into comparison tables and plots. The headline number is "
        "last-epoch test top-1, mean ± std over seeds.",
    )
    report_options.add_report_options(report)
    _add_methods_dir(report)

    compare = sub.add_parser(
        "compare", help="compare two results folders (or two grids) method by method",
        description="Compare the runs of two results folders, or two grid folders, on the pairs and methods they "
        "share: the difference B − A of each cell, paired by seed where the seeds match, with the report's "
        "intervals and corrected tests. For checking a new kdbench version, another GPU or a changed recipe.",
    )
    report_options.add_compare_options(compare)
    _add_methods_dir(compare)

    listing = sub.add_parser("list", help="list methods, models or datasets",
                             description="List the registered methods, models or datasets.")
    listing.add_argument("what", choices=["methods", "models", "datasets"], help="what to list")
    listing.add_argument("--dataset", default="cifar100", metavar="NAME",
                         help="for models: count MACs at this dataset's input size (default: cifar100)")
    _add_data_dir(listing)
    _add_methods_dir(listing)

    bench = sub.add_parser(
        "bench", help="measure training (or data pipeline) throughput",
        description="Measure training throughput of a cohort (one teacher forward shared by every student) "
        "against the same methods trained one at a time, on random data. No dataset on disk is needed.",
    )
    bench.add_argument("--teacher", default="resnet32x4", help="teacher architecture (default: resnet32x4)")
    bench.add_argument("--student", default="resnet8x4", help="student architecture (default: resnet8x4)")
    bench.add_argument("--methods", default="kd,dkd,normkd,label_swap,rld",
                       help="comma-separated methods trained as one cohort, or 'all' for every registered method "
                            "(default: kd,dkd,normkd,label_swap,rld); multi-view methods (mlkd) get random images "
                            "as their strong view")
    bench.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    bench.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on cpu, 200 on cuda)")
    bench.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default: 3 on cpu, 20 on cuda)")
    bench.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    bench.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32",
                       help="fp32 (default), bf16 autocast, fp16 autocast with a gradient scaler per member, or auto "
                            "(bf16 where the device runs it natively, else fp32)")
    bench.add_argument("--compile", action="store_true", help="torch.compile the models")
    bench.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    bench.add_argument("--num-classes", type=int, default=100, help="classes (default: 100)")
    bench.add_argument("--no-separate", action="store_true", help="skip the one-at-a-time comparison")
    bench.add_argument("--cuda-graphs", action="store_true",
                       help="also time the cohort's step captured as one CUDA graph (CUDA only)")
    bench.add_argument("--fuse-students", action="store_true",
                       help="also time same-architecture students fused into one stacked model")
    bench.add_argument("--fuse-backend", choices=["grouped", "vmap"], default=None,
                       help="how fused students run: grouped convolutions (HFTA) or torch.func.vmap "
                            "(default: grouped where the architecture allows)")
    bench.add_argument("--data-only", action="store_true",
                       help="measure only the on-device data pipeline (a CIFAR-sized epoch) and torchvision's DataLoader")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    _add_methods_dir(bench)

    doctor = sub.add_parser(
        "doctor", help="check this machine: versions, device, precisions, data, teachers, extras (--quick: train briefly)",
        description="Check that this machine can run kdbench: Python and PyTorch, the device and its precisions "
        "(bf16, fp16, TF32) and torch.compile, the data root and the datasets on disk (MD5), the teachers "
        "(SHA-256), the results folder, the optional extras. One line per check, ✓ or ✗ with a fix; the last "
        "line of standard output is a JSON summary. Exit code 1 only if the device can't train.",
    )
    doctor.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    doctor.add_argument(
        "--quick", action="store_true",
        help="also train a 2-epoch synthetic cohort in fp32 and bf16 (fp16 on GPUs without bf16), check exact "
        "resume, compile a model, run every method's conformance checks and a short bench (a few minutes)",
    )
    _add_data_dir(doctor)
    doctor.add_argument("--results-dir", default="results", metavar="DIR",
                        help="the results folder to check (default: results)")
    doctor.add_argument("--scale", choices=["quick", "tiny"], default="quick", help=argparse.SUPPRESS)  # tests
    _add_methods_dir(doctor)

    teachers = sub.add_parser("teachers", help="fetch, evaluate or train teacher checkpoints",
                              description="Manage teacher checkpoints: fetch the reference release, measure their accuracy, or train one.")
    tsub = teachers.add_subparsers(dest="teachers_command", metavar="ACTION", required=True)
    fetch = tsub.add_parser("fetch", help="download and unpack the reference CIFAR-100 teachers",
                            description="Download mdistiller's cifar_teachers.tar into the data root and unpack it safely.")
    _add_data_dir(fetch)
    fetch.add_argument("--url", default=None, help="download from this URL instead of the reference release")
    evaluate = tsub.add_parser("eval", help="measure each teacher's test accuracy; write a manifest with SHA-256",
                               description="Measure each available teacher's test top-1 and write teachers.json beside the checkpoints.")
    _add_data_dir(evaluate)
    evaluate.add_argument("--dataset", default="cifar100", help="dataset to evaluate on (default: cifar100)")
    evaluate.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    evaluate.add_argument("--teachers-dir", metavar="DIR", help="folder of <arch>_vanilla/ckpt_epoch_240.pth (default: DATA/cifar_teachers)")
    train = tsub.add_parser("train", help="train a teacher from scratch with the student harness",
                            description="Train a teacher from scratch (the vanilla method) and save it in the reference release format.")
    train.add_argument("arch", help="architecture, e.g. resnet32x4")
    _add_data_dir(train)
    train.add_argument("--dataset", default="cifar100", help="dataset (default: cifar100)")
    train.add_argument("--epochs", type=int, default=240,
                       help="epochs (default: 240); the LR milestones are the reference ones scaled to them")
    train.add_argument("--lr", type=float, default=None, help="learning rate (default: the reference rule)")
    train.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    train.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    train.add_argument("--out", metavar="FILE", help="checkpoint path (default: DATA/cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kdbench` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        from kdbench import methods

        for folder in getattr(args, "methods_dir", []) or []:
            methods.add_search_path(folder)
        return _dispatch(args) or 0
    except KdbenchError as exc:
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdbench: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int | None:
    if args.command in ("run", "status", "verify"):
        from kdbench.launch import commands

        return {"run": commands.cli_run, "status": commands.cli_status, "verify": commands.cli_verify}[args.command](args)
    if args.command in ("export", "import"):
        from kdbench.launch import bundles

        return bundles.cli_export(args) if args.command == "export" else bundles.cli_import(args)
    if args.command in ("report", "compare"):
        from kdbench.report import cli as report_cli

        return report_cli.cli_report(args) if args.command == "report" else report_cli.cli_compare(args)
    if args.command == "list":
        from kdbench.tools import listing

        return listing.cli_list(args)
    if args.command == "bench":
        from kdbench.tools import bench

        return bench.cli_bench(args)
    if args.command == "doctor":
        from kdbench.doctor import command as doctor

        return doctor.cli_doctor(args)
    if args.command == "teachers":
        from kdbench.teachers import command as teachers

        return teachers.cli_teachers(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
