"""LumiNet and CRLD: goldens from the official code (tests/fixtures/make_loss_goldens_wave3.py)
and the official code's quirks, as tests. SDD's and WKD-L's cases of the same fixture are
checked by tests/test_losses_sdd_wkd.py."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdbench import methods
from test_losses_wave2 import _extreme, inputs, total

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = json.loads((FIXTURES / "losses_golden_wave3.json").read_text())["cases"]
WAVE3 = ["luminet", "crld"]
EXTRA = ["sdd", "wkd_l"]  # cases with extra inputs: tests/test_losses_sdd_wkd.py
_spec = importlib.util.spec_from_file_location("make_loss_goldens", FIXTURES / "make_loss_goldens.py")
make_goldens = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_goldens)


def _case_id(case: dict) -> str:
    shape = case.get("crafted") or "x".join(map(str, _shape(case)))
    return f"{case['method']}-{sorted(case['hparams'])}-e{case['epoch']}-{shape}"


def _shape(case: dict) -> tuple[int, int]:
    if "inputs" in case:
        return case["inputs"]["batch"], case["inputs"]["classes"]
    student = case["student"]["weak"] if isinstance(case["student"], dict) else case["student"]
    return len(student), len(student[0])


@pytest.mark.parametrize("case", [c for c in GOLDEN if c["method"] in WAVE3], ids=_case_id)
def test_golden_values_and_gradients_match_the_official_code(case):
    student, teacher, targets = make_goldens.case_tensors(case)
    method = methods.build(case["method"], **case["hparams"]).double()
    leaves = student if isinstance(student, dict) else {None: student}
    for leaf in leaves.values():
        leaf.requires_grad_(True)
    loss = total(method(student, teacher, targets, epoch=case["epoch"]))
    loss.backward()
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(case["loss"], rel=1e-10, abs=1e-12)
    for view, leaf in leaves.items():
        if "grad" in case:
            expected = case["grad"] if view is None else case["grad"][view]
            torch.testing.assert_close(leaf.grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)
        else:  # a large case stores a sketch of the gradient (sums and projections per row)
            expected = case["grad_sketch"] if view is None else case["grad_sketch"][view]
            difference = make_goldens.grad_sketch(leaf.grad) - torch.tensor(expected, dtype=torch.float64)
            assert (difference.abs() <= 1e-9 * leaf.grad.abs().sum(dim=1, keepdim=True) + 1e-12).all(), (view, difference)


def test_goldens_cover_both_methods_the_warmup_and_the_thresholds():
    assert {c["method"] for c in GOLDEN} == set(WAVE3 + EXTRA)
    for name in WAVE3 + EXTRA:
        assert {10, 100, 1000} <= {_shape(c)[1] for c in GOLDEN if c["method"] == name}, name
    assert {c["epoch"] for c in GOLDEN if c["method"] == "luminet" and not c["hparams"]} >= {1, 2, 10, 19, 20, 21, 240}
    assert {c.get("crafted") for c in GOLDEN} >= {"luminet_constant_columns", "crld_at_tau_strong", "crld_at_both_taus"}
    # Every registered method has goldens, here or in losses_golden.json.
    older = json.loads((FIXTURES / "losses_golden.json").read_text())["cases"]
    assert {c["method"] for c in GOLDEN + older} == set(methods.available())


def test_crafted_teachers_sit_exactly_on_the_thresholds():
    rows = {c["crafted"]: c for c in GOLDEN if c.get("crafted", "").startswith("crld")}
    for name, taus in [("crld_at_tau_strong", {"strong": 0.2}), ("crld_at_both_taus", {"weak": 0.5, "strong": 0.25})]:
        teacher = rows[name]["teacher"]
        for view, tau in taus.items():
            confidence = F.softmax(torch.tensor(teacher[view], dtype=torch.float64), dim=1).max(dim=1).values
            assert (confidence == tau).any() and (confidence < tau).any(), (name, view)


# ------------------------------------------------------------------------------- LumiNet


def luminet_kl(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(batchmean) at T between the official `perception` of each side, written out."""
    def perceive(z):
        return (z - z.mean(0)) / (z.var(0, unbiased=False) + 1e-5).sqrt()
    return F.kl_div(F.log_softmax(perceive(s) / temperature, 1), F.softmax(perceive(t) / temperature, 1),
                    reduction="batchmean")


def test_luminet_declarations_and_defaults():
    cls = methods.method_class("luminet")
    assert methods.resolve_hparams("luminet") == {"alpha": 33.0, "temperature": 4.0, "ce_weight": 2.0, "warmup": 20}
    assert methods.epoch_hparams("luminet") == ("warmup",) and methods.batch_statistics(cls)
    assert methods.views_of(cls) is None


@pytest.mark.parametrize("alpha, temperature", [(33.0, 4.0), (70.0, 8.0), (2.0, 0.7)])
def test_luminet_scales_the_kl_by_alpha_squared_not_t_squared(alpha, temperature):
    s, t, y = inputs("luminet", classes=10)
    terms = methods.build("luminet", alpha=alpha, temperature=temperature, ce_weight=0.0)(s, t, y, epoch=30)
    kl = luminet_kl(s, t, temperature)
    assert set(terms) == {"kd"}
    assert terms["kd"].item() == pytest.approx(alpha**2 * kl.item(), rel=1e-12)
    assert terms["kd"].item() != pytest.approx(temperature**2 * kl.item(), rel=1e-3)


def test_luminet_standardises_each_class_over_the_batch_with_population_variance():
    standardize = sys.modules[methods.method_class("luminet").__module__].batch_standardize
    s, _, _ = inputs("luminet", classes=10, batch=12)
    z = standardize(s)
    torch.testing.assert_close(z.mean(0), torch.zeros(10, dtype=torch.float64), rtol=0, atol=1e-14)
    var = s.var(0, unbiased=False)
    torch.testing.assert_close(z.var(0, unbiased=False), var / (var + 1e-5), rtol=1e-12, atol=0)
    # ε sits inside the square root: a column of ±δ around its mean maps to ±δ / sqrt(δ² + 1e-5).
    delta = 2e-3
    column = torch.tensor([[1.0 + delta], [1.0 - delta]], dtype=torch.float64)
    expected = delta / math.sqrt(delta**2 + 1e-5)
    torch.testing.assert_close(standardize(column), torch.tensor([[expected], [-expected]], dtype=torch.float64),
                               rtol=1e-14, atol=0)
    assert expected != pytest.approx(delta / (delta + 1e-5), rel=1e-3) and expected != pytest.approx(1.0, rel=1e-3)


def test_luminet_ignores_a_per_class_shift_and_rescales_only_through_epsilon():
    s, t, y = inputs("luminet", classes=10)
    method = methods.build("luminet", ce_weight=0.0)
    base = method(s, t, y, epoch=30)["kd"]
    shift = torch.randn(1, 10, dtype=torch.float64) * 5  # one constant per class, across the batch
    assert method(s + shift, t - shift, y, epoch=30)["kd"].item() == pytest.approx(base.item(), rel=1e-10)
    # A per-sample shift, which plain KD ignores, changes LumiNet.
    row_shift = torch.randn(12, 1, dtype=torch.float64) * 5
    assert method(s, t + row_shift, y, epoch=30)["kd"].item() != pytest.approx(base.item(), rel=1e-3)


def test_luminet_is_a_batch_statistic():
    s, t, y = inputs("luminet", classes=10, batch=12)
    method = methods.build("luminet", ce_weight=0.0)
    whole = method(s, t, y, epoch=30)["kd"]
    halves = (method(s[:6], t[:6], y[:6], epoch=30)["kd"] + method(s[6:], t[6:], y[6:], epoch=30)["kd"]) / 2
    assert abs(whole.item() - halves.item()) > 1e-3


def test_luminet_warmup_is_linear_over_one_based_epochs_on_the_kl_only():
    s, t, y = inputs("luminet", classes=10)
    method = methods.build("luminet")
    full = method(s, t, y, epoch=20)
    for epoch, factor in [(1, 1 / 20), (10, 0.5), (19, 19 / 20), (20, 1.0), (21, 1.0), (240, 1.0)]:
        terms = method(s, t, y, epoch=epoch)
        assert terms["kd"].item() == pytest.approx(factor * full["kd"].item(), rel=1e-12)
        assert terms["ce"].item() == full["ce"].item() == pytest.approx(2.0 * F.cross_entropy(s, y).item(), rel=1e-12)


def test_luminet_batch_of_one_standardises_to_zeros():
    s, t, y = inputs("luminet", classes=10, batch=1)
    s.requires_grad_(True)
    terms = methods.build("luminet")(s, t, y, epoch=30)
    assert abs(terms["kd"].item()) < 1e-10  # uniform against uniform: 0 up to rounding
    total(terms).backward()
    torch.testing.assert_close(s.grad, torch.autograd.grad(2.0 * F.cross_entropy(s, y), s)[0], rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------- CRLD


def crld_inputs(batch: int = 12, classes: int = 10, seed: int = 0):
    return inputs("crld", classes=classes, batch=batch, seed=seed)


def kd_rows(s: torch.Tensor, t: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """T² · Σ_c KL per row, written out."""
    p = F.softmax(t / temperature, 1)
    return (p * (p.log() - F.log_softmax(s / temperature, 1))).sum(1) * temperature**2


def test_crld_declarations_and_defaults():
    cls = methods.method_class("crld")
    assert methods.resolve_hparams("crld") == {"temperature": 4.0, "ce_weight": 1.0, "within_weight": 2.0,
                                               "cross_weight": 0.5, "tau_weak": 0.9, "tau_strong": 0.2}
    assert methods.views_of(cls) == ("weak", "strong")
    assert not methods.batch_statistics(cls) and methods.epoch_hparams("crld") == ()


def test_crld_ce_is_the_sum_of_both_views_means():
    s, t, y = crld_inputs()
    terms = methods.build("crld", ce_weight=0.7)(s, t, y, epoch=1)
    expected = 0.7 * (F.cross_entropy(s["weak"], y) + F.cross_entropy(s["strong"], y))
    assert terms["ce"].item() == pytest.approx(expected.item(), rel=1e-12)


def test_crld_terms_written_out_with_gated_out_rows_counted_as_zeros():
    s, t, y = crld_inputs(batch=16)
    t["weak"][::3] *= 8  # some confident weak-view rows and some flat strong-view ones: both gates mixed
    t["strong"][1::4] = 0.0
    method = methods.build("crld", ce_weight=0.0)
    terms = method(s, t, y, epoch=5)
    weak_gate = F.softmax(t["weak"], 1).max(1).values >= 0.9
    strong_gate = F.softmax(t["strong"], 1).max(1).values >= 0.2
    assert 0 < weak_gate.sum() < 16 and 0 < strong_gate.sum() < 16
    within = kd_rows(s["weak"], t["weak"]) + kd_rows(s["strong"], t["strong"])
    cross = kd_rows(s["strong"], t["weak"]) + kd_rows(s["weak"], t["strong"])
    assert terms["within_view"].item() == pytest.approx(2.0 * within[weak_gate].sum().item() / 16, rel=1e-12)
    assert terms["cross_view"].item() == pytest.approx(0.5 * cross[strong_gate].sum().item() / 16, rel=1e-12)
    # Not a mean over the gated rows only.
    assert terms["within_view"].item() != pytest.approx(2.0 * within[weak_gate].mean().item(), rel=1e-3)


def test_crld_weak_teacher_gates_the_within_view_term_and_strong_teacher_the_cross_view_term():
    s, t, y = crld_inputs()
    confident, unsure = t["weak"] * 20, torch.zeros_like(t["weak"])  # top-1 ≈ 1, and 1/C = 0.1
    method = methods.build("crld", ce_weight=0.0)
    only_weak = method(s, {"weak": confident, "strong": unsure}, y, epoch=1)
    assert only_weak["within_view"].item() > 0 and only_weak["cross_view"].item() == 0.0
    only_strong = method(s, {"weak": unsure, "strong": confident}, y, epoch=1)
    assert only_strong["within_view"].item() == 0.0 and only_strong["cross_view"].item() > 0


def test_crld_gates_on_the_teacher_confidence_at_temperature_one():
    # A margin of ln(9·9) over nine equal classes: top-1 = 0.9 at T = 1, but ≈ 0.25 at T = 4.
    s, _, y = crld_inputs(batch=2)
    row = torch.zeros(10, dtype=torch.float64)
    row[0] = math.log(81.0) + 1e-9
    teacher = row.expand(2, 10).clone()
    assert F.softmax(teacher, 1).max(1).values.min() >= 0.9 > F.softmax(teacher / 4, 1).max(1).values.max()
    terms = methods.build("crld", ce_weight=0.0, tau_strong=1.5)(s, {"weak": teacher, "strong": teacher}, y, epoch=1)
    assert terms["within_view"].item() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_crld_rows_exactly_at_the_threshold_pass_the_gate(dtype):
    # Five tied top logits, the rest far below: the top-1 probability is exactly 1/5 = τ_s.
    s, _, y = crld_inputs(batch=4)
    s = {k: v.to(dtype) for k, v in s.items()}
    teacher = torch.full((4, 10), -57.0, dtype=dtype)
    teacher[:, :5] = 3.0
    teacher[2:, 5:] = 0.0  # rows 2 and 3: 1 / (5 + 5e⁻³), just under τ_s
    confidence = F.softmax(teacher, 1).max(1).values
    assert (confidence[:2] == torch.tensor(0.2, dtype=dtype)).all() and (confidence[2:] < 0.2).all()
    t = {"weak": teacher, "strong": teacher}
    terms = methods.build("crld", ce_weight=0.0, tau_weak=1.5)(s, t, y, epoch=1)
    cross = kd_rows(s["strong"].double(), teacher.double()) + kd_rows(s["weak"].double(), teacher.double())
    assert terms["cross_view"].item() == pytest.approx(0.5 * cross[:2].sum().item() / 4, rel=1e-6)
    assert terms["cross_view"].item() != pytest.approx(0.0, abs=1e-3)  # `>` would give 0


def test_crld_float32_gate_compares_with_the_threshold_rounded_to_float32():
    # The official conf.ge(0.9) on float32 confidences compares with float32(0.9) = 0.89999998:
    # a row at exactly that confidence passes, though it is below 0.9.
    margins = math.log(9.0) + torch.arange(-400, 401, dtype=torch.float32) * 2.4e-7
    candidates = torch.full((len(margins), 10), -60.0)
    candidates[:, 0], candidates[:, 1] = margins, 0.0
    confidence = F.softmax(candidates, 1).max(1).values
    tau = torch.tensor(0.9, dtype=torch.float32)
    at, under = (confidence == tau).nonzero()[0, 0], (confidence < tau).nonzero()[-1, 0]
    teacher = candidates[torch.stack([at, under])]
    assert F.softmax(teacher, 1).max(1).values[0] == tau and tau.double() < 0.9
    s, _, y = crld_inputs(batch=2)
    s = {k: v.float() for k, v in s.items()}
    terms = methods.build("crld", ce_weight=0.0, tau_strong=1.5)(s, {"weak": teacher, "strong": teacher}, y, epoch=1)
    within = kd_rows(s["weak"].double(), teacher.double()) + kd_rows(s["strong"].double(), teacher.double())
    assert terms["within_view"].item() == pytest.approx(2.0 * within[0].item() / 2, rel=1e-5)


def test_crld_has_no_warmup_and_is_a_mean_over_rows():
    s, t, y = crld_inputs(batch=12)
    method = methods.build("crld")
    first, late = method(s, t, y, epoch=1), method(s, t, y, epoch=240)
    assert all(first[k].item() == late[k].item() for k in first)
    def half(rows: slice) -> dict:
        return method({k: v[rows] for k, v in s.items()}, {k: v[rows] for k, v in t.items()}, y[rows], epoch=1)

    a, b = half(slice(0, 6)), half(slice(6, 12))
    for key in first:
        assert first[key].item() == pytest.approx((a[key].item() + b[key].item()) / 2, rel=1e-12)


# ------------------------------------------------------------------------ both methods


@pytest.mark.parametrize("name", WAVE3)
def test_gradcheck_float64(name):
    s, t, y = inputs(name, classes=5, batch=6, scale=1.5, seed=3)
    method = methods.build(name, **({"tau_strong": 0.0} if name == "crld" else {})).double()
    if isinstance(s, dict):
        def loss_of(weak, strong):
            return total(method({"weak": weak, "strong": strong}, t, y, epoch=5))
        args = (s["weak"].requires_grad_(True), s["strong"].requires_grad_(True))
    else:
        def loss_of(x):
            return total(method(x, t, y, epoch=5))
        args = (s.requires_grad_(True),)
    assert torch.autograd.gradcheck(loss_of, args, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", WAVE3)
def test_terms_and_gradients_stay_finite_for_extreme_and_constant_logits(name):
    method = methods.build(name)
    views = methods.views_of(method)
    for s, t, y in _extreme():
        student = {v: s.clone().requires_grad_(True) for v in views} if views else s.clone().requires_grad_(True)
        teacher = {v: t.clone() for v in views} if views else t
        terms = method(student, teacher, y, epoch=30)
        for key, value in terms.items():
            assert torch.isfinite(value), (name, key, value)
        total(terms).backward()
        for leaf in (student.values() if views else [student]):
            assert torch.isfinite(leaf.grad).all(), name


@pytest.mark.parametrize("name", WAVE3)
def test_bf16_logits_are_computed_in_float32_and_float64_stays_float64(name):
    s, t, y = inputs(name, classes=100, batch=8)
    method = methods.build(name)
    cast = lambda x, dtype: {k: v.to(dtype) for k, v in x.items()} if isinstance(x, dict) else x.to(dtype)  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = method(cast(s, torch.bfloat16), cast(t, torch.bfloat16), y, epoch=30)
    exact = method(cast(cast(s, torch.bfloat16), torch.float32), cast(cast(t, torch.bfloat16), torch.float32), y, epoch=30)
    for key in exact:
        assert low[key].dtype == torch.float32
        assert low[key].item() == pytest.approx(exact[key].item(), rel=1e-5)
    assert all(v.dtype == torch.float64 for v in method(s, t, y, epoch=30).values())
