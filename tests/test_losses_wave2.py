"""What the papers of DIST, TTM/WTTM, NKD, WSLD, CTKD and MLKD state about their losses, and
the official code's quirks, as tests (the goldens in test_losses.py pin the values)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench import methods
from kdbench.methods import losses
from test_losses import _rows

WAVE2 = ["dist", "ttm", "wttm", "nkd", "wsld", "ctkd", "mlkd"]


def rows(classes: int, batch: int = 12, scale: float = 3.0, seed: int = 0):
    """float64 logits whose rows cycle through teacher-right, wrong, tied and true-class-last."""
    return _rows(classes, batch, scale, seed)


def inputs(name: str, classes: int = 10, batch: int = 12, scale: float = 3.0, seed: int = 0):
    """(student, teacher, targets) in the form method `name` takes: tensors, or dicts of views."""
    s, t, y = rows(classes, batch, scale, seed)
    if methods.views_of(methods.method_class(name)) is None:
        return s, t, y
    s2, t2, _ = rows(classes, batch, scale, seed + 1)
    return {"weak": s, "strong": s2}, {"weak": t, "strong": t2}, y


def total(terms: dict) -> torch.Tensor:
    return sum(terms.values())


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log()).sum(dim=1)


# ---------------------------------------------------------------------------------- DIST


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_dist_is_unchanged_by_a_per_sample_constant(side):
    s, t, y = rows(10)
    shift = torch.randn(12, 1, dtype=torch.float64) * 5
    method = methods.build("dist")
    base = method(s, t, y, epoch=1)
    moved = method(s + shift, t, y, epoch=1) if side == "student" else method(s, t + shift, y, epoch=1)
    for key in ("inter", "intra"):
        assert moved[key].item() == pytest.approx(base[key].item(), rel=1e-12)


def test_pearson_correlation_is_unchanged_by_a_positive_affine_map():
    a, b = torch.rand(6, 20, dtype=torch.float64), torch.rand(6, 20, dtype=torch.float64)
    torch.testing.assert_close(losses.pearson_correlation(3 * a + 2, b), losses.pearson_correlation(a, b),
                               rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(losses.pearson_correlation(-a, b), -losses.pearson_correlation(a, b), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(losses.pearson_correlation(a, a), torch.ones(6, dtype=torch.float64), rtol=1e-7, atol=1e-7)


def test_dist_adds_eps_to_the_norm_product_not_a_clamped_cosine():
    # Columns of centred probabilities over a small batch at 1000 classes have tiny norms:
    # there the official form and F.cosine_similarity's clamp differ.
    a = torch.full((2, 3), 1e-3, dtype=torch.float64) * torch.tensor([[1.0, 2.0, 4.0], [1.0, 3.0, 2.0]])
    b = a.flip(1)
    centred_a, centred_b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    official = (centred_a * centred_b).sum(1) / (centred_a.norm(dim=1) * centred_b.norm(dim=1) + 1e-8)
    torch.testing.assert_close(losses.pearson_correlation(a, b), official, rtol=1e-15, atol=0.0)
    clamped = F.cosine_similarity(centred_a, centred_b, dim=1, eps=1e-8)
    assert not torch.allclose(clamped, official, rtol=1e-5, atol=0.0)


def test_dist_intra_class_term_is_a_batch_statistic():
    s, t, y = rows(10, batch=12)
    method = methods.build("dist", ce_weight=0.0)
    whole = method(s, t, y, epoch=1)["intra"]
    halves = (method(s[:6], t[:6], y[:6], epoch=1)["intra"] + method(s[6:], t[6:], y[6:], epoch=1)["intra"]) / 2
    assert abs(whole.item() - halves.item()) > 1e-3
    # The inter-class term is a mean over samples, so it splits.
    inter = method(s, t, y, epoch=1)["inter"]
    split = (method(s[:6], t[:6], y[:6], epoch=1)["inter"] + method(s[6:], t[6:], y[6:], epoch=1)["inter"]) / 2
    assert inter.item() == pytest.approx(split.item(), rel=1e-12)


def test_dist_defaults_are_the_official_cifar_config():
    # dist_cifar.yaml: ori_loss_weight 1, kd_loss_weight 2, kd dist_t4 = DIST(beta=1, gamma=1, tau=4).
    assert methods.resolve_hparams("dist") == {"beta": 2.0, "gamma": 2.0, "temperature": 4.0, "ce_weight": 1.0}


# --------------------------------------------------------------------------- TTM and WTTM


@pytest.mark.parametrize("gamma", [0.1, 0.2, 0.5, 1.0])
def test_ttm_transformed_teacher_is_softmax_of_scaled_logits(gamma):
    _, t, _ = rows(100)
    transformed, total_mass = losses.power_transform(t, gamma)
    torch.testing.assert_close(transformed, F.softmax(gamma * t, dim=1), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(total_mass, F.softmax(t, dim=1).pow(gamma).sum(1), rtol=0, atol=0)


@pytest.mark.parametrize("gamma", [0.1, 0.25, 0.5])
def test_kd_equals_ttm_plus_a_renyi_entropy_term(gamma):
    # With q = softmax(γt) and T = 1/γ: KL(q‖softmax(s/T)) = γ·KL(q‖softmax(s)) + (1−γ)·(H_γ(softmax(s)) − H(q)).
    s, t, _ = rows(100)
    q = F.softmax(gamma * t, dim=1)
    kd = losses.kl_div(F.log_softmax(gamma * s, dim=1), q)
    ttm = losses.kl_div(F.log_softmax(s, dim=1), q)
    renyi = torch.log(F.softmax(s, dim=1).pow(gamma).sum(1)) / (1 - gamma)
    torch.testing.assert_close(kd, gamma * ttm + (1 - gamma) * (renyi - entropy(q)), rtol=1e-10, atol=1e-10)


def test_ttm_has_no_student_temperature_and_no_t_squared():
    s, t, y = rows(10)
    terms = methods.build("ttm", gamma=0.25, ttm_weight=1.0, ce_weight=0.0)(s, t, y, epoch=1)
    expected = losses.kl_div(F.log_softmax(s, dim=1), F.softmax(0.25 * t, dim=1)).mean()
    assert set(terms) == {"ttm"}
    assert terms["ttm"].item() == pytest.approx(expected.item(), rel=1e-10)


def test_wttm_is_ttm_per_sample_times_the_power_sum():
    s, t, y = rows(100)
    gamma = 0.2
    ttm = methods.build("ttm", gamma=gamma, ttm_weight=1.0, ce_weight=0.0)
    wttm = methods.build("wttm", gamma=gamma, wttm_weight=1.0, ce_weight=0.0)
    weight = F.softmax(t, dim=1).pow(gamma).sum(1)
    for i in range(len(y)):
        one = slice(i, i + 1)
        assert wttm(s[one], t[one], y[one], epoch=1)["wttm"].item() == pytest.approx(
            weight[i].item() * ttm(s[one], t[one], y[one], epoch=1)["ttm"].item(), rel=1e-10)
    # U is 1 for a one-hot teacher and C^(1−γ) for a uniform one.
    assert 1 - 1e-12 <= weight.min() and weight.max() <= 100 ** (1 - gamma) + 1e-9
    flat = losses.power_transform(torch.zeros(1, 100, dtype=torch.float64), gamma)[1]
    assert flat.item() == pytest.approx(100 ** (1 - gamma), rel=1e-12)


def test_ttm_and_wttm_defaults_are_the_readme_settings():
    assert methods.resolve_hparams("ttm") == {"gamma": 0.1, "ttm_weight": 45.0, "ce_weight": 1.0}
    assert methods.resolve_hparams("wttm") == {"gamma": 0.2, "wttm_weight": 4.0, "ce_weight": 1.0}


# ------------------------------------------------------------------------------------ NKD


def test_nkd_terms_are_cross_entropies_nonzero_when_student_equals_teacher():
    s, t, y = rows(10)
    method = methods.build("nkd", ce_weight=0.0)
    terms = method(t.clone(), t, y, epoch=1)
    p_target = F.softmax(t, dim=1).gather(1, y[:, None]).squeeze(1)
    assert terms["target"].item() == pytest.approx(-(p_target * p_target.log()).mean().item(), rel=1e-10)
    non_target = F.softmax(losses.drop_column(t, y) / 3.0, dim=1)
    assert terms["non_target"].item() == pytest.approx(3.5 * 9 * entropy(non_target).mean().item(), rel=1e-10)
    assert terms["non_target"].item() > 1.0


def test_kd_soft_cross_entropy_splits_into_nkd_target_and_weighted_non_target_terms():
    # −Σ p_t log p_s = −p_t[y] log p_s[y] + (1 − p_t[y])·(H(p̂_t, p̂_s) − log(1 − p_s[y])), p̂ = non-target, renormalised.
    s, t, y = rows(100)
    p_t, log_p_s = F.softmax(t, dim=1), F.log_softmax(s, dim=1)
    soft_ce = losses.soft_cross_entropy(log_p_s, p_t)
    pt_y, ps_y = p_t.gather(1, y[:, None]).squeeze(1), log_p_s.exp().gather(1, y[:, None]).squeeze(1)
    non_target = losses.soft_cross_entropy(F.log_softmax(losses.drop_column(s, y), dim=1),
                                           F.softmax(losses.drop_column(t, y), dim=1))
    torch.testing.assert_close(soft_ce, -pt_y * ps_y.log() + (1 - pt_y) * (non_target - torch.log1p(-ps_y)),
                               rtol=1e-10, atol=1e-10)
    # NKD's terms at λ = 1, γ = 1 are the first term and the unweighted non-target cross-entropy.
    terms = methods.build("nkd", temperature=1.0, gamma=1.0, ce_weight=0.0)(s, t, y, epoch=1)
    assert terms["target"].item() == pytest.approx((-pt_y * ps_y.log()).mean().item(), rel=1e-10)
    assert terms["non_target"].item() == pytest.approx(non_target.mean().item(), rel=1e-10)


def test_drop_column_equals_boolean_indexing():
    s, _, y = rows(10)
    mask = torch.ones_like(s).scatter_(1, y[:, None], 0).bool()
    torch.testing.assert_close(losses.drop_column(s, y), s[mask].reshape(len(y), -1), rtol=0, atol=0)


# ----------------------------------------------------------------------------------- WSLD


def test_wsld_weight_carries_no_gradient_and_lies_in_0_1():
    s, t, y = rows(100)
    method = methods.build("wsld", ce_weight=0.0, alpha=1.0, temperature=4.0)
    student = s.clone().requires_grad_(True)
    total(method(student, t, y, epoch=1)).backward()
    ratio = F.cross_entropy(s, y, reduction="none") / (F.cross_entropy(t, y, reduction="none") + 1e-7)
    weight = 1 - torch.exp(-ratio)
    assert (weight >= 0).all() and (weight <= 1).all()
    manual = s.clone().requires_grad_(True)
    soft = losses.soft_cross_entropy(F.log_softmax(manual / 4, dim=1), F.softmax(t / 4, dim=1))
    (16 * (weight * soft).mean()).backward()
    torch.testing.assert_close(student.grad, manual.grad, rtol=1e-10, atol=1e-14)


def test_wsld_value_includes_the_teacher_entropy():
    _, t, y = rows(10)
    terms = methods.build("wsld", ce_weight=0.0)(t.clone(), t, y, epoch=1)
    # With the student equal to the teacher the CE ratio is 1 (up to the 1e-7), so w = 1 − 1/e.
    expected = 2.25 * 16 * (1 - math.exp(-1)) * entropy(F.softmax(t / 4, dim=1)).mean()
    assert terms["wsld"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_wsld_uses_the_class_count_of_the_logits():
    for classes in (10, 1000):
        s, t, y = rows(classes, batch=4)
        assert torch.isfinite(total(methods.build("wsld")(s, t, y, epoch=1)))


# ----------------------------------------------------------------------------------- CTKD


def test_ctkd_has_exactly_one_learnable_scalar_starting_at_one():
    method = methods.build("ctkd")
    params = dict(method.named_parameters())
    assert list(params) == ["theta"] and params["theta"].numel() == 1 and params["theta"].dim() == 0
    assert params["theta"].item() == 1.0
    assert set(method.state_dict()) == {"theta"}  # saved in the checkpoint with the method
    assert methods.epoch_scalars(method)["temperature"] == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)


def test_ctkd_temperature_stays_within_the_official_bounds():
    method = methods.build("ctkd")
    for theta in (-30.0, -2.0, 0.0, 2.5, 30.0):
        with torch.no_grad():
            method.theta.fill_(theta)
        temperature = method.epoch_scalars()["temperature"].item()
        assert 1.0 <= temperature <= 21.0
    with torch.no_grad():
        method.theta.fill_(0.4)
    assert method.epoch_scalars()["temperature"].item() == pytest.approx(1 + 20 / (1 + math.exp(-0.4)), rel=1e-6)


def test_ctkd_lambda_follows_the_official_cosine_curve():
    values = {e: losses.cosine_schedule(e, 0.0, -1.0, 10) for e in range(0, 13)}
    expected = {1: -0.024471741852423, 2: -0.095491502812526, 3: -0.206107373853763, 5: -0.5, 9: -0.975528258147577}
    for epoch, value in expected.items():
        assert values[epoch] == pytest.approx(value, abs=1e-12)
    assert values[0] == 0.0 and values[10] == values[11] == values[12] == -1.0
    assert all(values[e + 1] < values[e] for e in range(10))
    assert losses.cosine_schedule(3, 0.0, -1.0, 0) == -1.0


@pytest.mark.parametrize("epoch", [1, 4, 10, 30])
def test_ctkd_theta_receives_lambda_times_the_loss_gradient(epoch):
    s, t, y = rows(10)
    method = methods.build("ctkd").double()
    total(method(s, t, y, epoch=epoch)).backward()
    # Without the reversal: the same loss as a function of θ.
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    temperature = 1 + 20 * torch.sigmoid(theta)
    (0.9 * losses.kd_divergence(s, t, temperature)).backward()
    lam = losses.cosine_schedule(epoch, 0.0, -1.0, 10)
    assert method.theta.grad.item() == pytest.approx(lam * theta.grad.item(), rel=1e-10)
    assert method.theta.grad.item() * theta.grad.item() < 0  # reversed: θ ascends the loss


def test_ctkd_student_gradient_is_kd_at_the_current_temperature():
    s, t, y = rows(10)
    method = methods.build("ctkd").double()
    student = s.clone().requires_grad_(True)
    total(method(student, t, y, epoch=5)).backward()
    reference = s.clone().requires_grad_(True)
    temperature = 1 + 20 / (1 + math.exp(-1.0))
    (0.1 * F.cross_entropy(reference, y) + 0.9 * losses.kd_divergence(reference, t, temperature)).backward()
    torch.testing.assert_close(student.grad, reference.grad, rtol=1e-10, atol=1e-14)


def test_ctkd_standardize_is_kd_on_z_scored_logits_at_the_learned_temperature():
    s, t, y = rows(10)
    terms = methods.build("ctkd", standardize=True, kd_weight=9.0).double()(s, t, y, epoch=3)
    temperature = 1 + 20 / (1 + math.exp(-1.0))
    expected = 9 * losses.kd_divergence(losses.standardize(s), losses.standardize(t), temperature)
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-10)


def test_ctkd_temperature_curve_over_a_tiny_run():
    # A student's logits as parameters, θ in the same SGD (the harness does the same), 12 epochs.
    torch.manual_seed(0)
    s, t, y = rows(10, batch=32, seed=4)
    student = torch.nn.Parameter(s.float().clone())
    method = methods.build("ctkd")
    optimizer = torch.optim.SGD([student, *method.parameters()], lr=0.05, momentum=0.9, weight_decay=5e-4)
    curve = [method.epoch_scalars()["temperature"].item()]
    for epoch in range(1, 13):
        for _ in range(5):
            optimizer.zero_grad()
            total(method(student, t.float(), y, epoch=epoch)).backward()
            optimizer.step()
        curve.append(method.epoch_scalars()["temperature"].item())
    assert all(1.0 < value < 21.0 for value in curve)
    steps = [abs(b - a) for a, b in zip(curve, curve[1:])]
    assert steps[0] < 0.05 and max(steps[8:]) > 5 * steps[0]  # |λ| grows from 0.02 in epoch 1 to 1
    assert curve == pytest.approx(CTKD_CURVE, abs=1e-3)


# T after each epoch of that run (epoch 0: the start, 1 + 20·σ(1)); it rises as θ ascends the KD loss.
CTKD_CURVE = [15.6212, 15.6218, 15.6285, 15.6505, 15.6968, 15.7743, 15.8859, 16.0298, 16.1998, 16.3862,
              16.578, 16.7659, 16.9446]


# ----------------------------------------------------------------------------------- MLKD


def test_mlkd_declares_two_views():
    assert methods.method_class("mlkd").views == ("weak", "strong")


@pytest.mark.parametrize("n", [7, 8, 64, 100])
def test_at_most_median_equals_numpy_percentile_50(n):
    g = torch.Generator().manual_seed(n)
    for values in (torch.rand(n, generator=g), torch.rand(n, generator=g).round(decimals=1),
                   torch.full((n,), 0.25)):
        expected = values.le(float(np.percentile(values.numpy().flatten(), 50)))
        assert torch.equal(losses.at_most_median(values), expected)
    # Adjacent float32 values in the middle: the midpoint rounds as numpy's does.
    a = torch.tensor(0.3)
    middle = torch.stack([a, torch.nextafter(a, torch.tensor(1.0))])
    values = torch.cat([torch.zeros(3), middle, torch.ones(3)])
    assert torch.equal(losses.at_most_median(values), values.le(float(np.percentile(values.numpy(), 50))))


def test_mlkd_weak_terms_are_scaled_by_the_fraction_at_or_below_the_median():
    s, t, y = inputs("mlkd", batch=8)
    terms = methods.build("mlkd", ce_weight=0.0)(s, t, y, epoch=1)
    temps = (4.0, 3.0, 5.0, 2.0, 6.0)
    confidence = F.softmax(t["weak"], dim=1).max(1).values
    assert losses.at_most_median(confidence).double().mean().item() == 0.5  # 8 distinct values: 4 at or below
    bc = sum(losses.batch_correlation(s["weak"], t["weak"], T) for T in temps)
    assert terms["bc"].item() == pytest.approx(0.9 * 0.5 * bc.item(), rel=1e-12)
    kd_weak = sum(losses.kd_divergence(s["weak"], t["weak"], T) for T in temps)
    # The official "strong" sum: the strong view at T = 4, 3, 5, but the weak view at T = 2, 6.
    kd_strong = (sum(losses.kd_divergence(s["strong"], t["strong"], T) for T in (4.0, 3.0, 5.0))
                 + sum(losses.kd_divergence(s["weak"], t["weak"], T) for T in (2.0, 6.0)))
    assert terms["kd"].item() == pytest.approx(0.9 * (0.5 * kd_weak + kd_strong).item(), rel=1e-12)


def test_mlkd_strong_view_reaches_the_loss_only_through_ce_and_kd_at_4_3_5():
    s, t, y = inputs("mlkd")
    strong = s["strong"].clone().requires_grad_(True)
    total(methods.build("mlkd")({"weak": s["weak"], "strong": strong}, t, y, epoch=1)).backward()
    reference = s["strong"].clone().requires_grad_(True)
    (0.1 * F.cross_entropy(reference, y)
     + 0.9 * sum(losses.kd_divergence(reference, t["strong"], T) for T in (4.0, 3.0, 5.0))).backward()
    torch.testing.assert_close(strong.grad, reference.grad, rtol=1e-10, atol=1e-14)


def test_mlkd_standardize_changes_only_the_kd_terms():
    s, t, y = inputs("mlkd")
    plain = methods.build("mlkd")(s, t, y, epoch=1)
    standard = methods.build("mlkd", standardize=True)(s, t, y, epoch=1)
    for key in ("ce", "cc", "bc"):
        assert standard[key].item() == plain[key].item()
    assert standard["kd"].item() != pytest.approx(plain["kd"].item(), rel=1e-3)


def test_mlkd_never_syncs_with_the_host(monkeypatch):
    s, t, y = inputs("mlkd", batch=16)
    s = {k: v.float().requires_grad_(True) for k, v in s.items()}
    t = {k: v.float() for k, v in t.items()}
    method = methods.build("mlkd", standardize=True)

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside the loss")

    for attr in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    loss = total(method(s, t, y, epoch=1))
    loss.backward()
    monkeypatch.undo()
    assert torch.isfinite(loss).item()


# ------------------------------------------------------------------------ every new method


@pytest.mark.parametrize("name", [n for n in WAVE2 if n != "wsld"])  # WSLD's weight is detached on purpose
def test_gradcheck_float64(name):
    s, t, y = inputs(name, classes=5, batch=6, scale=1.5, seed=3)
    hp = {"standardize": True} if "standardize" in methods.resolve_hparams(name) else {}
    method = methods.build(name, **hp).double()
    if isinstance(s, dict):
        def loss_of(weak, strong):
            return total(method({"weak": weak, "strong": strong}, t, y, epoch=5))
        args = (s["weak"].requires_grad_(True), s["strong"].requires_grad_(True))
    else:
        def loss_of(x):
            return total(method(x, t, y, epoch=5))
        args = (s.requires_grad_(True),)
    assert torch.autograd.gradcheck(loss_of, args, eps=1e-6, atol=1e-6)


def _extreme(classes=10):
    y = torch.arange(4) % classes
    big, big_t = torch.full((4, classes), -1e4), torch.full((4, classes), -1e4)
    big[torch.arange(4), (y + 1) % classes] = 1e4
    big_t[torch.arange(4), y] = 1e4
    constant = torch.zeros(4, classes)
    return [(big, big_t, y), (-big, big_t, y), (big, -big, y), (constant, big_t, y), (big, constant, y),
            (constant, constant.clone(), y), (torch.full((4, classes), 7.0), torch.full((4, classes), -3.0), y)]


@pytest.mark.parametrize("name", WAVE2)
@pytest.mark.parametrize("standardize", [False, True])
def test_terms_and_gradients_stay_finite_for_extreme_and_constant_logits(name, standardize):
    if standardize and "standardize" not in methods.resolve_hparams(name):
        pytest.skip("no standardize option")
    method = methods.build(name, **({"standardize": True} if standardize else {}))
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


@pytest.mark.parametrize("name", WAVE2)
def test_bf16_logits_are_computed_in_float32(name):
    s, t, y = inputs(name, classes=100, batch=8)
    method = methods.build(name)
    cast = lambda x, dtype: {k: v.to(dtype) for k, v in x.items()} if isinstance(x, dict) else x.to(dtype)  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = method(cast(s, torch.bfloat16), cast(t, torch.bfloat16), y, epoch=30)
    exact = method(cast(cast(s, torch.bfloat16), torch.float32), cast(cast(t, torch.bfloat16), torch.float32), y, epoch=30)
    for key in exact:
        assert low[key].dtype == torch.float32
        assert low[key].item() == pytest.approx(exact[key].item(), rel=1e-5)
