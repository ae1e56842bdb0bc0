"""Optional tracking sinks (TensorBoard, Weights & Biases), fed once per epoch.

A sink receives the same per-epoch row as `metrics.jsonl`, after it is written, never
anything from inside the training step. Sinks are dashboards: `metrics.jsonl` stays the
record. A sink whose package is missing, or that fails when it opens or later, gives one
warning and is turned off; training goes on. Usage::

    sinks = open_sinks(options["log"], run_dir, run_config=config, run_id=run_id,
                       grid=grid_name, cohort=cohort_id, start_epoch=epochs_done)
    ...
    sinks.log_epoch(row)          # after metrics.jsonl is written for the epoch
    ...
    sinks.close()                 # close(failed=True) when the run failed

The sink names (`SINK_NAMES`) live with the recipe's options (`kdbench.grid.recipe`).
"""

from __future__ import annotations

import importlib.util
import netrc
import numbers
import os
import re
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from kdbench.core.once import warn_once
from kdbench.grid.recipe import SINK_NAMES

#: The sink names `options.log` accepts, with the package each needs.
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}

_SPLITS = ("train", "test", "val")
_TIMING = ("epoch_seconds", "images_per_s")


class TrackingWarning(RuntimeWarning):
    """A tracking sink is missing or failed; training goes on without it."""


def scalar_tags(row: Mapping[str, Any]) -> dict[str, float]:
    """Every numeric field of a metrics row (except `epoch`) under its dashboard tag.

    `train_top1` → `train/top1`, `test_top5` → `test/top5`, `val_top1` → `val/top1`;
    `train_loss`, `test_loss` → `loss/train`, `loss/test`; `loss_<term>` → `loss/<term>`;
    `epoch_seconds`, `images_per_s` → `time/...`; `method_<name>` → `method/<name>`;
    anything else (`lr`) keeps its name. Missing values (None) and non-numbers are left out.
    """
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        out[_tag(key)] = float(value)
    return out


def _tag(key: str) -> str:
    if key.startswith("loss_"):
        return "loss/" + key[len("loss_"):]
    if key.startswith("method_"):
        return "method/" + key[len("method_"):]
    if key in _TIMING:
        return "time/" + key
    split, _, rest = key.partition("_")
    if split in _SPLITS and rest:
        return f"loss/{split}" if rest == "loss" else f"{split}/{rest}"
    return key


class _Sink(Protocol):
    def log(self, epoch: int, scalars: dict[str, float]) -> None: ...

    def close(self, failed: bool) -> None: ...


class Sinks:
    """The open sinks of one run. Each method is safe to call whatever happened before."""

    def __init__(self, sinks: dict[str, _Sink], run_id: str) -> None:
        self._sinks = dict(sinks)
        self._run_id = run_id

    @property
    def names(self) -> tuple[str, ...]:
        """The sinks still on."""
        return tuple(self._sinks)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """Send one metrics row (a finished epoch) to every sink; a failing sink is turned off."""
        scalars = scalar_tags(row)
        for name, sink in list(self._sinks.items()):
            try:
                sink.log(int(row["epoch"]), scalars)
            except Exception as exc:  # noqa: BLE001 -- a dashboard never stops training
                self._drop(name, "failed while logging", exc)

    def close(self, failed: bool = False) -> None:
        """Flush and close every sink; `failed` marks the run as failed where the sink can say so."""
        for name, sink in list(self._sinks.items()):
            try:
                sink.close(failed)
            except Exception as exc:  # noqa: BLE001
                self._drop(name, "failed while closing", exc, close=False)
        self._sinks.clear()

    def _drop(self, name: str, what: str, exc: BaseException, close: bool = True) -> None:
        sink = self._sinks.pop(name)
        _warn(f"{name} {what} for run {self._run_id} ({_describe(exc)}); it is off for this run, "
              "training goes on (metrics.jsonl has every epoch)")
        if close:
            try:
                sink.close(True)
            except Exception:  # noqa: BLE001 -- already reported once
                pass

    def __enter__(self) -> "Sinks":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(failed=exc_type is not None)


def open_sinks(names: Sequence[str], run_dir: str | os.PathLike, *, run_config: Mapping[str, Any],
               run_id: str, grid: str, cohort: str, start_epoch: int = 0,
               label: str | None = None) -> Sinks:
    """Open the sinks `names` (from `options.log`) for one run whose folder is `run_dir`.

    `start_epoch` is the number of epochs already finished (the resume point): TensorBoard
    drops its events after it, W&B resumes the run with the same id. `label` is the run's
    display name (default: `run_id`). A missing package or a sink that fails to open gives
    one `TrackingWarning` and is left out.
    """
    sinks: dict[str, _Sink] = {}
    for name in dict.fromkeys(names):
        if name not in _OPENERS:
            raise ValueError(f"unknown tracking sink {name!r}; known: {', '.join(SINK_NAMES)}")
        package = _PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            _warn_once(f"{name} logging needs the {package} package: pip install 'kdbench[{name}]'; "
                       f"training goes on without it")
            continue
        try:
            sinks[name] = _OPENERS[name](Path(run_dir), dict(run_config), run_id, grid, cohort, start_epoch,
                                         label or run_id)
        except Exception as exc:  # noqa: BLE001
            _warn(f"{name} failed to open for run {run_id} ({_describe(exc)}); it is off for this run, "
                  "training goes on")
    return Sinks(sinks, run_id)


# -- TensorBoard --------------------------------------------------------------------------


class _TensorBoard:
    """Event files in `<run_dir>/tensorboard/`, one scalar per tag, the epoch as the step."""

    def __init__(self, run_dir: Path, run_config: dict, run_id: str, grid: str, cohort: str,
                 start_epoch: int, label: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on resume, TensorBoard's reader drops the earlier session's events
        # from this epoch on, so a re-trained epoch is not shown twice.
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                    purge_step=start_epoch + 1 if start_epoch > 0 else None)

    def log(self, epoch: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=epoch)
        self.writer.flush()

    def close(self, failed: bool) -> None:
        self.writer.close()


# -- Weights & Biases ---------------------------------------------------------------------


class _WandB:
    """One W&B run per kdbench run: group = grid, job type = cohort, config = the run config.

    Files go to `<run_dir>/wandb/`. `WANDB_MODE=offline` works without an account
    (`wandb sync` uploads later); without WANDB_MODE and without a known login it logs
    offline too, rather than stall on a login prompt. `WANDB_PROJECT` (default "kdbench")
    and `WANDB_ENTITY` choose where runs go.
    """

    def __init__(self, run_dir: Path, run_config: dict, run_id: str, grid: str, cohort: str,
                 start_epoch: int, label: str) -> None:
        import wandb

        mode = None if _wandb_login_known() else "offline"
        if mode:
            _warn_once("wandb: no W&B login found (WANDB_API_KEY, `wandb login`); logging offline into each "
                       "run's wandb/ folder (upload with `wandb sync`; WANDB_MODE chooses)")
        settings = wandb.Settings(console="off", silent=True, disable_git=True, save_code=False,
                                  x_disable_stats=True)
        self.run = wandb.init(
            mode=mode, project=os.environ.get("WANDB_PROJECT") or "kdbench", dir=str(run_dir),
            id=wandb_id(grid, run_id), name=label, group=grid, job_type=f"cohort-{cohort}", config=run_config,
            resume="allow", reinit="create_new", settings=settings,
        )

    def log(self, epoch: int, scalars: dict[str, float]) -> None:
        self.run.log({**scalars, "epoch": epoch}, step=epoch)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def _wandb_login_known() -> bool:
    """True when W&B will not need to ask for a login: WANDB_MODE is set, or a key is in the
    environment or in the netrc file for the W&B host. A prompt would stall training."""
    if any(os.environ.get(v) for v in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE")):
        return True
    host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_id(grid: str, run_id: str) -> str:
    """The W&B run id of a kdbench run: unique per grid, so two grids never share a W&B run."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{grid}-{run_id}")[-64:]


_OPENERS: dict[str, Callable[..., _Sink]] = {"tensorboard": _TensorBoard, "wandb": _WandB}

# -- warnings -----------------------------------------------------------------------------

def _warn_once(message: str) -> None:
    # A missing package is the same news for every run of the process: say it once.
    warn_once(message, TrackingWarning, stacklevel=2)


def _warn(message: str) -> None:
    warnings.warn(message, TrackingWarning, stacklevel=3)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
