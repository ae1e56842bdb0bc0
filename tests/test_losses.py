"""Golden values, identities, gradients and edge cases of the built-in losses."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdbench import methods
from kdbench.methods import losses

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = json.loads((FIXTURES / "losses_golden.json").read_text())["cases"]
# The script that wrote the goldens rebuilds the inputs of the large cases from their seed.
_spec = importlib.util.spec_from_file_location("make_loss_goldens", FIXTURES / "make_loss_goldens.py")
make_goldens = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_goldens)


def total(terms: dict) -> torch.Tensor:
    return sum(terms.values())


def _shape(case: dict) -> tuple[int, int]:
    """(batch, classes) of a golden case."""
    if "inputs" in case:
        return case["inputs"]["batch"], case["inputs"]["classes"]
    student = case["student"]["weak"] if isinstance(case["student"], dict) else case["student"]
    return len(student), len(student[0])


def _case_id(case: dict) -> str:
    batch, classes = _shape(case)
    theta = f"-theta{case['theta']}" if "theta" in case else ""
    return f"{case['method']}-{sorted(case['hparams'])}-e{case['epoch']}-{batch}x{classes}{theta}"


@pytest.mark.parametrize("case", GOLDEN, ids=_case_id)
def test_golden_values_and_gradients_match_the_official_code(case):
    student, teacher, targets = make_goldens.case_tensors(case)
    method = methods.build(case["method"], **case["hparams"]).double()
    if "theta" in case:
        with torch.no_grad():
            method.theta.fill_(case["theta"])
    leaves = student if isinstance(student, dict) else {None: student}
    for leaf in leaves.values():
        leaf.requires_grad_(True)
    loss = total(method(student, teacher, targets, epoch=case["epoch"]))
    loss.backward()
    assert loss.item() == pytest.approx(case["loss"], rel=1e-10, abs=1e-12)
    grads = {view: leaf.grad for view, leaf in leaves.items()}
    if "grad" in case:
        expected = case["grad"] if isinstance(student, dict) else {None: case["grad"]}
        for view, grad in grads.items():
            torch.testing.assert_close(grad, torch.tensor(expected[view], dtype=torch.float64), rtol=1e-9, atol=1e-12)
    else:  # a large case stores a sketch of the gradient (sums and projections per row)
        expected = case["grad_sketch"] if isinstance(student, dict) else {None: case["grad_sketch"]}
        for view, grad in grads.items():
            scale = grad.abs().sum(dim=1, keepdim=True)
            difference = make_goldens.grad_sketch(grad) - torch.tensor(expected[view], dtype=torch.float64)
            assert (difference.abs() <= 1e-9 * scale + 1e-12).all(), (view, difference)
    if "theta" in case:
        assert method.theta.grad.item() == pytest.approx(case["theta_grad"], rel=1e-9, abs=1e-12)


def test_goldens_cover_every_method_and_the_schedules():
    wave3 = json.loads((FIXTURES / "losses_golden_wave3.json").read_text())["cases"]
    covered = {case["method"] for case in GOLDEN + wave3}
    assert covered == set(methods.available())
    classes = {name: {_shape(c)[1] for c in GOLDEN if c["method"] == name} for name in covered}
    for name in ("dist", "ttm", "wttm", "nkd", "wsld", "ctkd", "mlkd"):
        assert {10, 100, 1000} <= classes[name], name
    assert {c["epoch"] for c in GOLDEN if c["method"] == "ctkd" and not c["hparams"]} >= set(range(1, 13))
    assert {c["theta"] for c in GOLDEN if c["method"] == "ctkd"} >= {-2.0, -0.5, 0.0, 0.4, 2.5, 1.0}
    for name in ("dkd", "rld"):
        assert {c["epoch"] for c in GOLDEN if c["method"] == name and not c["hparams"]} >= {1, 2, 10, 19, 20, 21, 30}


def test_kd_by_hand_two_classes():
    # softmax([0, ln 3]) = [1/4, 3/4]; student uniform. KL = 1/4 ln(1/2) + 3/4 ln(3/2) at T = 1.
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[0.0, torch.log(torch.tensor(3.0)).item()]])
    terms = methods.build("kd", temperature=1.0, ce_weight=0.0, kd_weight=1.0)(student, teacher, torch.tensor([1]), epoch=1)
    expected = 0.25 * torch.log(torch.tensor(0.5)) + 0.75 * torch.log(torch.tensor(1.5))
    assert set(terms) == {"kd"}
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_kd_is_zero_when_student_equals_teacher():
    logits = torch.randn(8, 10)
    terms = methods.build("kd")(logits, logits.clone(), torch.zeros(8, dtype=torch.long), epoch=1)
    assert terms["kd"].abs().item() < 1e-6


@pytest.mark.parametrize("name", ["dkd", "rld"])
def test_warmup_is_linear_over_one_based_epochs(name):
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.arange(6)
    method = methods.build(name, warmup=20)
    full = method(s, t, y, epoch=20)
    for epoch, factor in [(1, 1 / 20), (10, 0.5), (20, 1.0), (240, 1.0)]:
        terms = method(s, t, y, epoch=epoch)
        for key in terms:
            if key != "ce":
                assert terms[key].item() == pytest.approx(factor * full[key].item(), rel=1e-6)
        assert terms["ce"].item() == pytest.approx(full["ce"].item())


def _rows(classes: int, batch: int = 40, scale: float = 3.0, seed: int = 0):
    """Random logits whose rows cycle through teacher-right, wrong, tied and true-class-last."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, classes, generator=g, dtype=torch.float64) * scale
    t = torch.randn(batch, classes, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, classes, (batch,), generator=g)
    for i in range(batch):
        other = (y[i] + 1) % classes
        kind = i % 4
        if kind == 0:
            t[i, y[i]] = t[i].max() + 1
        elif kind == 1:
            t[i, other] = t[i].max() + 1
        elif kind == 2:
            t[i, other] = t[i, y[i]] = t[i].max() + 1
        else:
            t[i, y[i]] = t[i].min() - 1
    return s, t, y


@pytest.mark.parametrize("classes", [10, 100, 1000])
def test_kd_decomposes_into_tckd_and_weighted_nckd(classes):
    s, t, y = _rows(classes)
    temperature = 4.0
    target = losses.one_hot_mask(s, y)
    kd = losses.kd_divergence(s, t, temperature, reduction="none")
    tckd = losses.binary_kl(s, t, target, target, temperature, reduction="none")
    nckd = losses.non_target_kl(s, t, target, temperature, reduction="none")
    teacher_p_target = F.softmax(t / temperature, dim=1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(kd, tckd + (1 - teacher_p_target) * nckd, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("classes", [10, 100, 1000])
def test_rld_mcd_equals_dkd_nckd_where_the_teacher_is_right(classes):
    s, t, y = _rows(classes)
    # "Right" means strictly right: a tie at the top masks the tied class too.
    right = t.gather(1, y[:, None]).squeeze(1) > t.scatter(1, y[:, None], float("-inf")).max(1).values
    assert right.any() and not right.all()
    target = losses.one_hot_mask(s, y)
    at_or_above = t >= t.gather(1, y[:, None])
    mcd = losses.masked_kl(s, t, at_or_above, 4.0, reduction="none")
    nckd = losses.non_target_kl(s, t, target, 4.0, reduction="none")
    torch.testing.assert_close(mcd[right], nckd[right], rtol=1e-9, atol=1e-9)


def test_rld_mcd_is_zero_not_nan_when_the_true_class_is_ranked_last():
    s, t, y = _rows(10)
    last = t.gather(1, y[:, None]).squeeze(1) == t.min(1).values
    at_or_above = t >= t.gather(1, y[:, None])
    mcd = losses.masked_kl(s, t, at_or_above, 4.0, reduction="none")
    assert last.any()
    assert torch.all(mcd[last].abs() < 1e-12)


@pytest.mark.parametrize("classes", [10, 100])
def test_label_swap_equals_kd_with_the_same_weights_when_the_teacher_is_right(classes):
    s, t, y = _rows(classes)
    right = t.argmax(1) == y
    s, t, y = s[right], t[right], y[right]
    for standardize in (False, True):
        hp = dict(temperature=3.0, ce_weight=0.2, kd_weight=1.5, standardize=standardize)
        swap = methods.build("label_swap", **hp)(s, t, y, epoch=1)
        kd = methods.build("kd", **hp)(s, t, y, epoch=1)
        assert swap.keys() == kd.keys()
        for key in kd:
            torch.testing.assert_close(swap[key], kd[key])


def test_rld_ties_with_the_true_class_are_masked():
    # Class 1 ties with the true class 0: both leave the MCD softmax (mask uses >=).
    s = torch.tensor([[1.0, 2.0, 0.5, -1.0]], dtype=torch.float64)
    t = torch.tensor([[3.0, 3.0, 1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    mask = t >= t.gather(1, y[:, None])
    assert mask.tolist() == [[True, True, False, False]]
    manual = losses.kd_divergence(s[:, 2:], t[:, 2:], 4.0)
    assert losses.masked_kl(s, t, mask, 4.0).item() == pytest.approx(manual.item(), rel=1e-12)


@pytest.mark.parametrize("name", ["vanilla", "kd", "dkd", "normkd", "label_swap", "label_revision", "rld"])
def test_gradcheck_float64(name):
    s, t, y = _rows(5, batch=6, scale=1.5, seed=3)
    method = methods.build(name, **({"standardize": True} if "standardize" in methods.resolve_hparams(name) else {}))
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: total(method(x, t, y, epoch=5)), (s,), eps=1e-6, atol=1e-6)


def _extreme_cases(classes=10):
    y = torch.arange(4) % classes
    big = torch.full((4, classes), -1e4)
    big_t = big.clone()
    big[torch.arange(4), (y + 1) % classes] = 1e4      # student confidently wrong
    big_t[torch.arange(4), y] = 1e4                    # teacher confidently right
    flipped = -big
    constant = torch.zeros(4, classes)
    return [(big, big_t, y), (flipped, big_t, y), (big, flipped, y), (constant, big_t, y), (big, constant, y),
            (constant, constant.clone(), y), (torch.full((4, classes), 7.0), torch.full((4, classes), -3.0), y)]


@pytest.mark.parametrize("name", ["vanilla", "kd", "dkd", "normkd", "label_swap", "label_revision", "rld"])
@pytest.mark.parametrize("standardize", [False, True])
def test_terms_and_gradients_stay_finite_for_extreme_and_constant_logits(name, standardize):
    hp = {"standardize": standardize} if "standardize" in methods.resolve_hparams(name) else {}
    method = methods.build(name, **hp)
    for s, t, y in _extreme_cases():
        s = s.clone().requires_grad_(True)
        terms = method(s, t, y, epoch=30)
        for key, value in terms.items():
            assert torch.isfinite(value), (name, key, value)
        total(terms).backward()
        assert torch.isfinite(s.grad).all(), name


@pytest.mark.parametrize("name", ["kd", "dkd", "normkd", "label_swap", "label_revision", "rld"])
def test_bf16_logits_are_computed_in_float32(name):
    s, t, y = _rows(100, batch=8)
    method = methods.build(name)
    reference = method(s.float(), t.float(), y, epoch=30)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = method(s.bfloat16(), t.bfloat16(), y, epoch=30)
    for key in reference:
        assert low[key].dtype == torch.float32
    # Only the bf16 rounding of the logits themselves differs.
    exact = method(s.bfloat16().float(), t.bfloat16().float(), y, epoch=30)
    for key in reference:
        assert low[key].item() == pytest.approx(exact[key].item(), rel=1e-5)


def test_normkd_uses_teacher_temperature_squared_and_unbiased_std():
    s, t, y = _rows(10, batch=5)
    terms = methods.build("normkd", t_norm=2.0, ce_weight=0.0, kd_weight=1.0)(s, t, y, epoch=1)
    t_t = 2.0 * t.std(dim=1, keepdim=True, unbiased=True)
    t_s = 2.0 * s.std(dim=1, keepdim=True, unbiased=True)
    per_sample = (F.softmax(t / t_t, 1) * (F.log_softmax(t / t_t, 1) - F.log_softmax(s / t_s, 1))).sum(1)
    expected = (per_sample * t_t.squeeze(1) ** 2).mean()
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-10)


def test_label_revision_groups_by_teacher_correctness():
    s, t, y = _rows(10, batch=8)
    terms = methods.build("label_revision", lambda1=4.0, lambda2=1.0, eta=0.8)(s, t, y, epoch=1)
    right = t.argmax(1) == y
    ce = F.cross_entropy(s[right], y[right])
    mse_right = F.mse_loss(s[right], t[right])
    pt = F.softmax(t[~right], 1)
    beta = 0.8 / (pt.max(1, keepdim=True).values - pt.gather(1, y[~right][:, None]) + 1)
    revised = beta * pt + (1 - beta) * F.one_hot(y[~right], 10)
    mse_wrong = F.mse_loss(F.softmax(s[~right], 1), revised)
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-10)
    assert terms["mse_right"].item() == pytest.approx(4.0 * mse_right.item(), rel=1e-10)
    assert terms["mse_wrong"].item() == pytest.approx(mse_wrong.item(), rel=1e-10)


def test_label_revision_with_every_row_right_or_wrong():
    s, t, y = _rows(10, batch=8)
    right = t.argmax(1) == y
    method = methods.build("label_revision")
    all_right = method(s[right], t[right], y[right], epoch=1)
    all_wrong = method(s[~right], t[~right], y[~right], epoch=1)
    assert all_right["mse_wrong"].item() == 0.0
    assert all_wrong["ce"].item() == 0.0 and all_wrong["mse_right"].item() == 0.0
