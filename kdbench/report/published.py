"""Published numbers (`kdbench/report/published_results.csv`) and the reproduction-gap view against them."""

from __future__ import annotations

import io
import re
from importlib import resources
from typing import Any

import pandas as pd

from kdbench.report.cells import teacher_top1
from kdbench.report.layout import Cell, Grid, View, finite
from kdbench.report.prepare import TEACHER_ROW, Prepared, text
from kdbench.report.views import protocol_label, protocol_notes

__all__ = ["REPRODUCTION", "load_published", "published_spec", "reproduction_view", "variant_matches"]

REPRODUCTION = "reproduction"
_BEST_EPOCH = ("megvii-research/mdistiller#30, sunshangquan/logit-standardization-KD#23; trials: "
               "megvii-research/mdistiller#42, sunshangquan/logit-standardization-KD#12; kdbench README, "
               "“What is measured, and why last-epoch”")


def published_spec(published_method: str) -> tuple[str, dict[str, Any]]:
    """The kdbench method a published method name means, and the hyper-parameters that must match.

    `name` is kdbench's method `name` without logit standardization; `name+ls` is it with
    (`standardize: true`; Sun et al., CVPR 2024). Other hyper-parameters are not compared,
    since each paper tunes them per pair.
    """
    method, ls, _ = published_method.partition("+ls")
    return method, {"standardize": bool(ls)}


def load_published() -> pd.DataFrame:
    """The bundled published numbers: columns dataset, teacher, student, method, top1, source, protocol.

    `protocol` (optional in the file, empty when absent) notes a number obtained under the
    paper's own training protocol rather than the common recipe.
    """
    content = resources.files("kdbench.report").joinpath("published_results.csv").read_text(encoding="utf-8")
    frame = pd.read_csv(io.StringIO(content), dtype={"top1": float})
    if "protocol" not in frame.columns:
        frame["protocol"] = ""
    frame["protocol"] = frame["protocol"].map(text)
    return frame


def _norm(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", text(name).lower())


def _norm_model(name: Any) -> str:
    # "resnet34_imagenet" (kdbench's ImageNet zoo) matches the papers' "ResNet34".
    return _norm(name).removesuffix("imagenet")


def variant_matches(runs: pd.DataFrame, variant: str, published_method: str) -> bool:
    """Whether every run of `variant` has the method and flags of `published_method`."""
    method, required = published_spec(published_method)
    sel = runs[runs["variant"] == variant]
    if sel.empty or any(text(m) != method for m in sel["method"]):
        return False
    for hp in sel["hparams"]:
        hp = hp if isinstance(hp, dict) else {}
        if any(bool(hp.get(k, False)) != v if isinstance(v, bool) else hp.get(k) != v for k, v in required.items()):
            return False
    return True


_HEADER = ["Pair", "Row", "Published method", "Ours", "Published", "Gap", "Source"]


def _grid(frame: pd.DataFrame) -> Grid:
    rows = []
    for i, r in frame.iterrows():
        n = int(r["n"]) if finite(r["n"]) else None
        ours = Cell(value=r["ours_mean"], std=r["ours_std"] if n and n >= 2 else None, n=n, show_n=n is not None,
                    source=(i, "ours_mean"))
        rows.append([Cell(text=r["pair"]), Cell(text=protocol_label(r["variant"], r["protocol"])),
                     Cell(text=f"{r['published_method']} ‡" if text(r["published_protocol"]) else r["published_method"]),
                     ours, Cell(value=r["published"], source=(i, "published")),
                     Cell(value=r["gap"], signed=True, source=(i, "gap")), Cell(text=f"[{int(r['source_ref'])}]")])
    return Grid(header=list(_HEADER), rows=rows, align=["l", "l", "l", "r", "r", "r", "c"])


def reproduction_view(prep: Prepared, cells: pd.DataFrame, published: pd.DataFrame | None = None) -> View | None:
    """Ours minus published, for each pair and variant with a bundled published number (None if none match)."""
    published = load_published() if published is None else published
    if "protocol" not in published.columns:
        published = published.assign(protocol="")
    pub = published.assign(_key=[(_norm(d), _norm_model(t), _norm_model(s)) for d, t, s in
                                  zip(published["dataset"], published["teacher"], published["student"])])
    by_cell = {(r.variant, r.pair): r for r in cells.itertuples()}
    data = []
    refs: dict[str, int] = {}  # source → reference number, in order of first use
    for c in prep.pairs:
        pair_runs = prep.runs[prep.runs["pair"] == c]
        with_teacher = pair_runs[pair_runs["teacher"] != ""]  # a shared vanilla run has no teacher
        first = (with_teacher if len(with_teacher) else pair_runs).iloc[0]
        key = (_norm(first["dataset"]), _norm_model(first["teacher"]), _norm_model(first["student"]))
        for _, p in pub[pub["_key"] == key].iterrows():
            if p["method"] == "teacher":
                mean = teacher_top1(prep, c)[0]
                candidates = [(TEACHER_ROW, mean, None, None)] if finite(mean) else []
            else:
                candidates = [(v, by_cell[(v, c)].mean, by_cell[(v, c)].std, by_cell[(v, c)].n) for v in prep.variants
                              if (v, c) in by_cell and variant_matches(pair_runs, v, p["method"])]
            for who, mean, std, n in candidates:
                ref = refs.setdefault(p["source"], len(refs) + 1)
                data.append({"pair": c, "variant": who, "published_method": p["method"], "ours_mean": mean,
                             "ours_std": std, "n": n, "published": p["top1"], "gap": mean - p["top1"],
                             "source_ref": ref, "source": p["source"], "protocol": prep.protocols.get(who, ""),
                             "published_protocol": text(p["protocol"])})
    if not data:
        return None
    frame = pd.DataFrame(data)
    info = prep.info
    protocol = ("Published numbers mostly report the best test epoch, averaged over a few trials "
                f"({_BEST_EPOCH}); " + ("ours uses the same epoch choice." if prep.metric == "best" else
                                        f"ours is {info.short}, so compare with --metric best for like for like."))
    notes = [
        f"Gap = ours ({info.short}, mean over seeds) − published, in points.",
        protocol,
        "A variant is compared when its method matches and its `standardize` flag equals the published "
        "method's (+LS = logit standardization, Sun et al., CVPR 2024); other hyper-parameters are not checked.",
        "Sources marked [3rd-party] were quoted by another repository and not checked against the paper.",
    ]
    notes += protocol_notes(prep, [v for v in dict.fromkeys(frame["variant"])])
    for method, note in dict.fromkeys(zip(frame["published_method"], frame["published_protocol"])):
        if note:
            notes.append(f"‡ published `{method}`: {note}")
    notes += [f"[{k}] {source}" for source, k in refs.items()]
    return View(name=REPRODUCTION, title=f"Reproduction gap: ours − published ({info.short})", frame=frame,
                notes=notes, grid=_grid)
