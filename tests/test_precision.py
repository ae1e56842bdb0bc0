"""Precisions: fp16 with a gradient scaler per member and no host sync; bf16 refused where unsupported."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench import methods
from kdbench.train import precision
from kdbench.errors import KdbenchError
from kdbench.grid.recipe import Options
from kdbench.train.cohort import CohortSpec, train_cohort
from kdbench.train.trainee import Trainee, build_student

from test_train import (  # noqa: F401 (splits is a fixture)
    SPEC, TEACHER, assert_same_results, member, splits, steps_without_host_sync, teacher_model,
)


class _SpikeAtStepTwo(nn.Module):
    """Cross-entropy, scaled by 1000 at its second call: finite, but its fp16 gradients overflow."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, student_logits, teacher_logits, targets, *, epoch):
        self.calls += 1
        ce = F.cross_entropy(student_logits, targets)
        return {"ce": ce * 1000 if self.calls == 2 else ce}


@pytest.fixture
def spike():
    methods.register("spike_at_step_two")(_SpikeAtStepTwo)
    yield "spike_at_step_two"
    methods.unregister("spike_at_step_two")


def fp16_cohort(members):
    return CohortSpec(dataset=SPEC, seed=0, members=members, teacher=TEACHER, teacher_model=teacher_model(),
                      options=Options(precision="fp16"))


def test_a_members_scaler_skipping_a_step_leaves_the_others_alone(tmp_path, splits, spike):
    together = train_cohort(fp16_cohort([member("kd", tmp_path / "kd", epochs=1),
                                         member("spike", tmp_path / "spike", epochs=1, method=spike)]),
                            "cpu", data=splits)
    alone = train_cohort(fp16_cohort([member("kd", None, epochs=1)]), "cpu", data=splits)
    assert_same_results([together[0]], alone)
    assert all(r.status == "done" for r in together)
    scale = {name: torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["scaler"]["scale"]
             for name in ("kd", "spike")}
    assert scale == {"kd": 65536.0, "spike": 32768.0}  # the spike's overflow skipped its step only


def test_the_fp16_step_never_syncs_with_the_host(monkeypatch):
    trainee = Trainee(member("kd", None), build_student("resnet8", 0, 10, 3), methods.build("kd"),
                      torch.device("cpu"), Options(precision="fp16"))
    assert trainee.scaler is not None
    steps_without_host_sync(trainee, monkeypatch, precision="fp16")


def test_bf16_on_a_gpu_without_it_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-32GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    with pytest.raises(KdbenchError) as e:
        precision.check("cuda", "bf16")
    assert str(e.value) == ("options.precision: bf16 is not supported on Tesla V100-SXM2-32GB (compute capability "
                            "7.0); use fp16 (with a gradient scaler) or fp32")
    precision.check("cuda", "fp16")  # fine there
    precision.check("cpu", "bf16")
