"""Reading checkpoints safely and loading teachers from them.

Accepted layouts: `{"model": state_dict, ...}` (the reference release format; CRD teacher
files also carry epoch, accuracy, optimizer and an `argparse.Namespace`), `{"state_dict": ...}`,
a bare state dict, and keys prefixed `module.` (DataParallel) or `module.student.`
(mdistiller's distiller saves, whose `module.teacher.*` keys are dropped).
Files are always read with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdbench.errors import KdbenchError
from kdbench.models.zoo import available, build, canonical, zoo_of

_SHOW = 3  # how many keys an error message lists


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """The model state dict stored in checkpoint `path`, with wrapper prefixes removed."""
    path = Path(path)
    if not path.is_file():
        where = path.resolve() if not path.exists() else f"{path} (a folder, not a file)"
        raise KdbenchError(f"checkpoint not found: expected a file at {where}")
    return extract_state_dict(_torch_load(path), path)


def extract_state_dict(obj: Any, path: str | os.PathLike = "<checkpoint>") -> dict[str, Tensor]:
    """The model state dict inside a loaded checkpoint object (see the module docstring)."""
    state = obj
    if isinstance(obj, Mapping) and not _all_tensors(obj):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                break
    if not isinstance(state, Mapping) or not state or not _all_tensors(state):
        found = f"a dict with keys {_preview(list(obj))}" if isinstance(obj, Mapping) else type(obj).__name__
        raise KdbenchError(
            f"{path}: not a model checkpoint: expected a state dict or a dict with a 'model' state dict, found {found}"
        )
    return _strip_wrappers(dict(state))


def load_teacher(name: str, path: str | os.PathLike, num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Model `name` with the weights of checkpoint `path` (strict), in eval mode, parameters frozen.

    For the torchvision ImageNet models, `path="torchvision"` loads torchvision's ImageNet-1k weights.
    """
    name = canonical(name)
    if str(path) == "torchvision":
        state = _torchvision_state_dict(name, num_classes, in_channels)
        source = f"torchvision weights for {name}"
    else:
        state = load_state_dict_file(path)
        source = str(path)
    model = _fresh(name, num_classes, in_channels)
    problem = mismatch(model.state_dict(), state)
    if problem:
        guess = _guess_architecture(state, name, num_classes, in_channels)
        raise KdbenchError(f"{source}: not a checkpoint for '{name}'{guess}: {problem}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # a check mismatch() does not make; keep it to one line
        raise KdbenchError(f"{source}: cannot load into '{name}': {' '.join(str(e).split())}") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def mismatch(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> str:
    """A one-line description of how `state` differs from `expected` (keys, shapes), or ''."""
    # BatchNorm back-fills num_batches_tracked for checkpoints that predate it.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {_shape(state[k])} in the checkpoint vs {_shape(v)} in the model"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys {_preview(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys {_preview(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: {'; '.join(shapes[:_SHOW])}{' ...' if len(shapes) > _SHOW else ''}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------- internals


def _safe_globals() -> list[Any]:
    """Classes old reference pickles hold besides tensors: an argparse.Namespace, numpy scalars."""
    allowed: list[Any] = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:
        return allowed
    core = getattr(np, "_core", None) or np.core
    allowed += [core.multiarray.scalar, np.dtype]
    allowed += [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return allowed


@contextlib.contextmanager
def _allowing(globals_: list[Any]) -> Iterator[None]:
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        with serialization.safe_globals(globals_):
            yield
    else:  # torch < 2.5: only the process-wide allow-list exists (and none before 2.4)
        if hasattr(serialization, "add_safe_globals"):
            serialization.add_safe_globals(globals_)
        yield


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001  torch raises many types for a bad file
        if "weights only" not in str(first).lower() and "weights_only" not in str(first):
            raise KdbenchError(f"{path}: not a PyTorch checkpoint ({_first_line(first)})") from None
    try:
        with _allowing(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as second:  # noqa: BLE001
        raise KdbenchError(
            f"{path}: refused to unpickle it safely (weights_only=True): {_first_line(second)}"
        ) from None


def _strip_wrappers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("student.") for k in state):
        state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    return state


def _fresh(name: str, num_classes: int, in_channels: int) -> nn.Module:
    # A teacher's initial weights are overwritten, so its construction must not consume the
    # caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        return build(name, num_classes=num_classes, in_channels=in_channels)


def _guess_architecture(state: Mapping[str, Tensor], asked: str, num_classes: int, in_channels: int) -> str:
    """' (it looks like a 'x' checkpoint)' when another model of the same zoo fits `state` exactly."""
    for name in available(zoo_of(asked)):
        if name == asked:
            continue
        try:  # the guess is a courtesy: it must never hide the real error
            with torch.device("meta"):  # shapes only: no memory, no RNG
                candidate = build(name, num_classes=num_classes, in_channels=in_channels)
        except Exception:  # noqa: BLE001
            continue
        if not mismatch(candidate.state_dict(), state):
            return f" (it looks like a '{name}' checkpoint)"
    return ""


def fetch_torchvision_weights(name: str) -> Path:
    """The file of model `name`'s pinned torchvision weights, downloaded (hash-checked) if missing;
    offline, a one-line error saying where to put it."""
    from kdbench.models.imagenet import torchvision_weights_file

    path = torchvision_weights_file(name)
    if not path.is_file():
        _torchvision_state_dict(name, 1000, 3)
    return path


def _torchvision_state_dict(name: str, num_classes: int, in_channels: int) -> dict[str, Tensor]:
    from kdbench.models.imagenet import TORCHVISION, torchvision_weights

    if name not in TORCHVISION:
        raise KdbenchError(
            f"'torchvision' weights exist only for {', '.join(TORCHVISION)}; '{name}' needs a checkpoint file"
        )
    if num_classes != 1000 or in_channels != 3:
        raise KdbenchError(
            f"torchvision weights for {name} have 1000 classes and 3 input channels, "
            f"got num_classes={num_classes}, in_channels={in_channels}"
        )
    weights = torchvision_weights(name)
    try:
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as e:  # noqa: BLE001  URLError, HTTPError, socket errors, hash mismatch
        hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise KdbenchError(
            f"could not download torchvision weights for {name} from {weights.url} ({_first_line(e)}); "
            f"put that file at {hub} and re-run"
        ) from None


def _all_tensors(mapping: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, Tensor) for k, v in mapping.items())


def _preview(keys: list[Any]) -> str:
    shown = ", ".join(repr(k) if not isinstance(k, str) else k for k in keys[:_SHOW])
    return f"[{shown}{', ...' if len(keys) > _SHOW else ''}]"


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    # torch's weights-only refusal puts the useful line ("Unsupported global: ...") further down.
    useful = [line for line in lines if "Unsupported global" in line or "Unsupported operand" in line]
    text = (useful or lines or [""])[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
