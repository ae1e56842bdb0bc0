"""SDD and WKD-L: goldens from the official code (tests/fixtures/make_loss_goldens_wave3.py with
goldens_sdd_wkd.py), WKD-L's cost-matrix procedure on synthetic look-alikes, and the official
code's quirks, as tests."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdbench import methods
from kdbench.errors import KdbenchError
from test_losses_wave2 import total

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import goldens_sdd_wkd as sw  # noqa: E402
import make_loss_goldens as make_goldens  # noqa: E402

FIXTURE = json.loads((FIXTURES / "losses_golden_wave3.json").read_text())
GOLDEN = [c for c in FIXTURE["cases"] if c["method"] in ("sdd", "wkd_l")]


def _case_id(case: dict) -> str:
    shape = "x".join(map(str, (case["inputs"]["batch"], case["inputs"]["classes"]) if "inputs" in case
                         else (len(case["student"]), len(case["student"][0]))))
    edit = case["extra"].get("edit", "")
    return f"{case['method']}-{json.dumps(case['hparams'], sort_keys=True)}-e{case['epoch']}-{shape}{edit}"


@pytest.mark.parametrize("case", GOLDEN, ids=_case_id)
def test_golden_values_and_gradients_match_the_official_code(case):
    s, t, y = make_goldens.case_tensors(case)
    extra = sw.extras_of(case, y, s.shape[1])
    loss, grads = sw.ours(case["method"], s, t, y, methods.resolve_hparams(case["method"], case["hparams"]),
                          case["epoch"], extra)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(case["loss"], rel=1e-10, abs=1e-12)
    if "grad" in case:
        torch.testing.assert_close(grads["logits"], torch.tensor(case["grad"], dtype=torch.float64), rtol=1e-9, atol=1e-12)
    else:
        _assert_sketch(grads["logits"], case["grad_sketch"])
    if "grad_regions_sketch" in case:
        _assert_sketch(grads["regions"].permute(0, 2, 1).reshape(-1, s.shape[1]), case["grad_regions_sketch"])


def _assert_sketch(grad: torch.Tensor, expected: list) -> None:
    difference = make_goldens.grad_sketch(grad) - torch.tensor(expected, dtype=torch.float64)
    assert (difference.abs() <= 1e-9 * grad.abs().sum(dim=1, keepdim=True) + 1e-12).all(), difference


def test_goldens_cover_every_base_scale_list_the_schedules_and_the_crafted_edits():
    sdd = [methods.resolve_hparams("sdd", c["hparams"]) | {"epoch": c["epoch"]} for c in GOLDEN if c["method"] == "sdd"]
    assert {(h["base"], tuple(h["scales"])) for h in sdd} == {(b, m) for b in ("kd", "dkd", "nkd")
                                                            for m in ((1,), (1, 2), (1, 2, 4))}
    assert {h["epoch"] for h in sdd if h["base"] == "dkd" and h["warmup"] == 20} >= {1, 10, 20, 30}
    assert {c["extra"].get("edit") for c in GOLDEN} >= {"sdd_infinite_kl", "sdd_nan_entries"}
    assert {c["epoch"] for c in GOLDEN if c["method"] == "wkd_l" and not c["hparams"]} >= {1, 150, 151, 240}


def _cost_matrix_params() -> list:
    fast = {"wrn_16_1", "resnet8"}  # the large models' deterministic weights take seconds to fill
    return [pytest.param(c, id=f"{c['arch']}-{c['kind']}-{len(c['counts'])}",
                         marks=() if c["arch"] in fast else pytest.mark.slow) for c in FIXTURE["cost_matrices"]]


@pytest.mark.parametrize("case", _cost_matrix_params())
def test_cost_matrix_procedure_matches_the_official_scripts(case):
    # The official scripts' D was computed in float64 from the teacher's float32 features; another
    # machine's float32 convolutions may differ in their last bits.
    ours = sw.ours_cost_matrix(case)
    torch.testing.assert_close(ours, torch.tensor(case["distance"], dtype=torch.float64), rtol=0, atol=1e-5)
    assert torch.equal(ours, ours.t()) and not ours.diagonal().any()


# ----------------------------------------------------------------------------------- SDD


def sdd_inputs(classes: int = 10, batch: int = 6, scales=(1, 2), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    regions = sum(s * s for s in scales)
    s = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 3
    t = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, classes, (batch,), generator=g)
    sr = s.unsqueeze(2) + torch.randn(batch, classes, regions, generator=g, dtype=torch.float64) * 2
    tr = t.unsqueeze(2) + torch.randn(batch, classes, regions, generator=g, dtype=torch.float64) * 2
    return s, t, y, sr, tr


def kl_rows(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    p = F.softmax(t / temperature, 1)
    return (p * (p.log() - F.log_softmax(s / temperature, 1))).sum(1) * temperature**2


def test_sdd_declarations_and_defaults():
    cls = methods.method_class("sdd")
    assert methods.resolve_hparams("sdd") == {"base": "kd", "scales": [1, 2], "temperature": 4.0, "ce_weight": None,
                                              "kd_weight": 0.9, "alpha": 1.0, "beta": 8.0, "warmup": 20}
    assert cls.regions is True and methods.epoch_hparams("sdd") == ("warmup",) and not methods.batch_statistics(cls)
    assert methods.region_scales(methods.build("sdd", scales=[1, 2, 4])) == (1, 2, 4)
    assert methods.build("sdd").ce_weight == 0.1 and methods.build("sdd", base="dkd").ce_weight == 1.0


def test_sdd_kd_written_out_weights_complementary_regions_by_two_and_divides_by_n_b():
    s, t, y, sr, tr = sdd_inputs()
    terms = methods.build("sdd", ce_weight=0.0, kd_weight=1.0)(s, t, y, epoch=1, student_regions=sr, teacher_regions=tr)
    right = tr.argmax(1) == y[:, None]  # (B, N)
    weight = torch.where(right == right[:, :1], 1.0, 2.0).double()
    assert (weight == 2).any() and (weight[:, 0] == 1).all()
    per_region = torch.stack([kl_rows(sr[:, :, n], tr[:, :, n], 4.0) for n in range(5)], dim=1)
    assert terms["kd"].item() == pytest.approx(((per_region * weight).sum() / (5 * 6)).item(), rel=1e-12)
    assert set(terms) == {"kd"}


def test_sdd_kd_has_no_warmup_and_dkd_nkd_ramp_over_twenty_epochs():
    s, t, y, sr, tr = sdd_inputs()
    kd = methods.build("sdd")
    assert kd(s, t, y, epoch=1, student_regions=sr, teacher_regions=tr)["kd"].item() == \
        kd(s, t, y, epoch=240, student_regions=sr, teacher_regions=tr)["kd"].item()
    for base in ("dkd", "nkd"):
        method = methods.build("sdd", base=base)
        full = method(s, t, y, epoch=20, student_regions=sr, teacher_regions=tr)[base].item()
        for epoch, factor in [(1, 1 / 20), (10, 0.5), (21, 1.0)]:
            value = method(s, t, y, epoch=epoch, student_regions=sr, teacher_regions=tr)[base].item()
            assert value == pytest.approx(factor * full, rel=1e-12), (base, epoch)


def test_sdd_nkd_keeps_the_target_class_in_its_non_target_term():
    # The official mask is ones.scatter_(1, label, 1): every class stays.
    s, t, y, sr, tr = sdd_inputs(scales=(1,))
    terms = methods.build("sdd", base="nkd", scales=[1], ce_weight=0.0, beta=1.0)(s, t, y, epoch=30,
                                                                                 student_regions=sr, teacher_regions=tr)
    target = -(F.softmax(t, 1).gather(1, y[:, None]) * F.log_softmax(s, 1).gather(1, y[:, None])).squeeze(1)
    every = -(F.softmax(t / 4, 1) * F.log_softmax(s / 4, 1)).sum(1) * 16
    assert terms["nkd"].item() == pytest.approx((target + every).mean().item(), rel=1e-12)


def test_sdd_scales_one_is_the_base_loss_on_the_model_logits():
    s, t, y, sr, tr = sdd_inputs(scales=(1,))
    terms = methods.build("sdd", scales=[1])(s, t, y, epoch=1, student_regions=sr * 0, teacher_regions=tr * 0)
    assert terms["kd"].item() == pytest.approx(0.9 * kl_rows(s, t, 4.0).mean().item(), rel=1e-12)


def test_sdd_rejects_scale_lists_spp_does_not_pool():
    with pytest.raises(KdbenchError, match=r"^method sdd: scales \[1, 3\] are not a list SDD's SPP pools; choose one of"):
        methods.build("sdd", scales=[1, 3])


def test_sdd_non_finite_loss_becomes_zero_and_nan_kl_entries_are_dropped():
    s, t, y, sr, tr = sdd_inputs()
    sr = sr.clone().requires_grad_(True)
    method = methods.build("sdd", ce_weight=0.0)
    infinite = sr.detach().clone()
    infinite[1, 3, 2] = float("-inf")
    assert method(s, t, y, epoch=1, student_regions=infinite, teacher_regions=tr)["kd"].item() == 0.0
    both = sr.detach().clone(), tr.clone()
    both[0][0, 4, 1] = both[1][0, 4, 1] = float("-inf")
    value = method(s, t, y, epoch=1, student_regions=both[0], teacher_regions=both[1])["kd"]
    assert math.isfinite(value.item()) and value.item() > 0


def test_sdd_is_a_mean_over_samples():
    s, t, y, sr, tr = sdd_inputs(batch=8)
    method = methods.build("sdd", base="dkd")
    whole = total(method(s, t, y, epoch=30, student_regions=sr, teacher_regions=tr))
    halves = [total(method(s[r], t[r], y[r], epoch=30, student_regions=sr[r], teacher_regions=tr[r]))
              for r in (slice(0, 4), slice(4, 8))]
    assert whole.item() == pytest.approx((halves[0] + halves[1]).item() / 2, rel=1e-12)


# --------------------------------------------------------------------------------- WKD-L


def wkd(classes: int = 10, **hparams):
    method = methods.build("wkd_l", **hparams).double()
    method.set_teacher_artifact(sw.cost_matrix(5, classes))
    return method


def wasserstein_written_out(s, t, y, distance, temperature=8.0, reg=0.05, iterations=10, sharpen=1.0):
    """The official per-sample procedure: target row and column removed, (C−1)×(C−1) Sinkhorn."""
    out = []
    for b in range(len(y)):
        keep = torch.arange(s.shape[1]) != y[b]
        p = F.softmax(s[b, keep] / temperature, 0)
        q = F.softmax(t[b, keep] / temperature, 0)
        cost = F.relu(1 - torch.exp(-sharpen * distance[keep][:, keep])) + 1e-8
        kernel = torch.exp(-cost / reg)
        u = torch.full_like(p, 1 / len(p))
        for _ in range(iterations):
            v = q / (kernel.t() @ u + 1e-8)
            u = p / (kernel @ v + 1e-8)
        out.append((u[:, None] * kernel * v[None, :] * cost).sum())
    return torch.stack(out).mean()


def test_wkd_l_declarations_and_defaults():
    cls = methods.method_class("wkd_l")
    assert methods.resolve_hparams("wkd_l") == {"weight": 600.0, "temperature": 8.0, "ce_weight": 1.0, "sharpen": 1.0,
                                                "sinkhorn_lambda": 0.05, "sinkhorn_iterations": 10, "decay_start": 150,
                                                "decay_end": 240}
    assert cls.teacher_artifact == "wkd_cost_matrix" and methods.epoch_hparams("wkd_l") == ("decay_start", "decay_end")
    assert methods.reference_epochs("wkd_l") == 240 and not methods.batch_statistics(cls)


def test_wkd_l_terms_written_out():
    s, t, y, _, _ = sdd_inputs(batch=5)
    terms = wkd(weight=1.0)(s, t, y, epoch=1)
    target = -(F.softmax(t, 1).gather(1, y[:, None]) * F.log_softmax(s, 1).gather(1, y[:, None])).mean()
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-12)
    assert terms["target"].item() == pytest.approx(target.item(), rel=1e-12)
    expected = wasserstein_written_out(s, t, y, sw.cost_matrix(5, 10))
    assert terms["wasserstein"].item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("epoch, factor", [(1, 1.0), (150, 1.0), (151, 0.5 * (1 + math.cos(math.pi / 90))),
                                           (195, 0.5), (240, 0.0)])
def test_wkd_l_weight_is_constant_then_cosine_decayed(epoch, factor):
    s, t, y, _, _ = sdd_inputs()
    method = wkd()
    value = method(s, t, y, epoch=epoch)["wasserstein"].item()
    assert value == pytest.approx(factor * method(s, t, y, epoch=1)["wasserstein"].item(), rel=1e-12, abs=1e-12)


def test_wkd_l_needs_its_cost_matrix():
    s, t, y, _, _ = sdd_inputs()
    with pytest.raises(KdbenchError, match="^method wkd_l: no wkd_cost_matrix; the harness hands it over"):
        methods.build("wkd_l")(s, t, y, epoch=1)
    with pytest.raises(KdbenchError, match=r"^method wkd_l: the wkd_cost_matrix must be square, got shape \(3, 4\)"):
        methods.build("wkd_l").set_teacher_artifact(torch.zeros(3, 4))


def test_wkd_l_gradient_flows_through_every_sinkhorn_iteration():
    s, t, y, _, _ = sdd_inputs(batch=3, classes=5)
    distance = sw.cost_matrix(5, 5)

    def loss_of(x):
        method = methods.build("wkd_l", ce_weight=0.0, sinkhorn_iterations=4).double()
        method.set_teacher_artifact(distance)
        return method(x, t, y, epoch=1)["wasserstein"]

    assert torch.autograd.gradcheck(loss_of, (s.clone().requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_cost_matrix_gram_and_product_forms_agree():
    wkd_module = sys.modules[methods.method_class("wkd_l").__module__]
    g = torch.Generator().manual_seed(0)
    prototypes = torch.randn(4, 6, 5, generator=g)  # 6 rows > 5 columns: the d×d form
    wide = torch.randn(4, 3, 5, generator=g)        # 3 rows <= 5 columns: the Gram form
    for x in (prototypes, wide):
        d = wkd_module.linear_cka_distances(x, "test")
        expected = torch.empty(4, 4, dtype=torch.float64)
        for i in range(4):
            for j in range(4):
                a, b = x[i].double() - x[i].double().mean(0), x[j].double() - x[j].double().mean(0)
                expected[i, j] = 1 - (b.t() @ a).norm() ** 2 / ((a.t() @ a).norm() * (b.t() @ b).norm())
        torch.testing.assert_close(d, expected.fill_diagonal_(0.0), rtol=0, atol=1e-12)


def test_cost_matrix_refuses_constant_prototypes():
    wkd_module = sys.modules[methods.method_class("wkd_l").__module__]
    x = torch.randn(3, 6, 5)
    x[1] = 2.0
    with pytest.raises(KdbenchError, match="^teacher t: the prototypes of class 1 do not vary; linear CKA is undefined"):
        wkd_module.linear_cka_distances(x, "teacher t")
