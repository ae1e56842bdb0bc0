"""Published numbers (`kdbench/published_results.csv`) and the reproduction-gap view against them."""

from __future__ import annotations

import io
import re
from importlib import resources
from typing import Any, Hashable

import pandas as pd

from kdbench.report import stats
from kdbench.report.layout import Cell, Grid, View, finite
from kdbench.report.prepare import TEACHER_ROW, Prepared, text
from kdbench.report.views import seed_values

__all__ = ["PUBLISHED_METHODS", "load_published", "reproduction_view", "variant_matches"]

# Published method → (kdbench method, hyper-parameters that must match). A variant matches
# when its method is the same and every listed hyper-parameter has this value (a missing
# `standardize` counts as False); other hyper-parameters are not compared, since each paper
# tunes them per pair (see research/methods.md §4).
PUBLISHED_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "vanilla": ("vanilla", {}),
    "kd": ("kd", {"standardize": False}),
    "kd+ls": ("kd", {"standardize": True}),
    "dkd": ("dkd", {"standardize": False}),
    "dkd+ls": ("dkd", {"standardize": True}),
    "rld": ("rld", {"standardize": False}),
}


def load_published() -> pd.DataFrame:
    """The bundled published numbers: columns dataset, teacher, student, method, top1, source."""
    content = resources.files("kdbench").joinpath("published_results.csv").read_text(encoding="utf-8")
    return pd.read_csv(io.StringIO(content), dtype={"top1": float})


def _norm(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", text(name).lower())


def _norm_model(name: Any) -> str:
    # "resnet34_imagenet" (kdbench's ImageNet zoo) matches the papers' "ResNet34".
    return _norm(name).removesuffix("imagenet")


def variant_matches(runs: pd.DataFrame, variant: str, published_method: str) -> bool:
    """Whether every run of `variant` has the method and flags of `published_method`."""
    spec = PUBLISHED_METHODS.get(published_method)
    if spec is None:
        return False
    method, required = spec
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
        rows.append([Cell(text=r["column"]), Cell(text=r["variant"]), Cell(text=r["published_method"]), ours,
                     Cell(value=r["published"], source=(i, "published")),
                     Cell(value=r["gap"], signed=True, source=(i, "gap")), Cell(text=f"[{int(r['source_ref'])}]")])
    return Grid(header=list(_HEADER), rows=rows, align=["l", "l", "l", "r", "r", "r", "c"])


def reproduction_view(prep: Prepared, published: pd.DataFrame | None = None) -> View | None:
    """Ours minus published, for each pair and variant with a bundled published number (None if none match)."""
    published = load_published() if published is None else published
    pub = published.assign(_key=[(_norm(d), _norm_model(t), _norm_model(s)) for d, t, s in
                                  zip(published["dataset"], published["teacher"], published["student"])])
    data = []
    refs: dict[str, int] = {}  # source → reference number, in order of first use
    for c in prep.columns:
        col_runs = prep.runs[prep.runs["column"] == c]
        with_teacher = col_runs[col_runs["teacher"] != ""]  # a shared vanilla run has no teacher
        first = (with_teacher if len(with_teacher) else col_runs).iloc[0]
        key = (_norm(first["dataset"]), _norm_model(first["teacher"]), _norm_model(first["student"]))
        matches = pub[pub["_key"] == key]
        for _, p in matches.iterrows():
            if p["method"] == "teacher":
                mean, std, n = stats.mean_std(col_runs["teacher_top1"].dropna().tolist())
                candidates = [(TEACHER_ROW, mean, None, None)] if finite(mean) else []
            else:
                candidates = []
                for v in prep.variants:
                    values = seed_values(prep, v, c)
                    if values and variant_matches(col_runs, v, p["method"]):
                        candidates.append((v, *stats.mean_std(list(values.values()))))
            for who, mean, std, n in candidates:
                ref = refs.setdefault(p["source"], len(refs) + 1)
                data.append({"column": c, "variant": who, "published_method": p["method"], "ours_mean": mean,
                             "ours_std": std, "n": n, "published": p["top1"], "gap": mean - p["top1"],
                             "source_ref": ref, "source": p["source"]})
    if not data:
        return None
    info = prep.info
    protocol = ("Published numbers mostly report the best test epoch averaged over the papers' trials "
                "(research/methods.md §8); " + ("ours uses the same epoch choice." if prep.metric == "best" else
                                                f"ours is {info.short}, so compare with --metric best for like for like."))
    notes = [
        f"Gap = ours ({info.short}, mean over seeds) − published, in points.",
        protocol,
        "A variant is compared when its method matches and its `standardize` flag equals the published "
        "method's (+LS = logit standardization); other hyper-parameters are not checked.",
        "Sources marked [3rd-party] were quoted by another repository and not checked against the paper.",
    ] + [f"[{k}] {source}" for source, k in refs.items()]
    return View(name="reproduction", title=f"Reproduction gap: ours − published ({info.short})",
                frame=pd.DataFrame(data), notes=notes, grid=_grid)
