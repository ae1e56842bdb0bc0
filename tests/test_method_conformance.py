"""Every registered method, built-in or dropped in by a user, must pass the conformance checks.

Set KDBENCH_METHODS_PATH to a folder of your own method files to check them too.
"""

import pytest

from kdbench import methods
from kdbench.methods import conformance


@pytest.mark.parametrize("name", methods.available())
def test_method_conforms(name):
    conformance.check(name)


def test_every_method_has_a_description_and_typed_defaults():
    for name in methods.available():
        info = methods.describe(name)
        assert info.summary and info.summary != "(no description)", name
        for p in info.hparams:
            assert not p.required and p.type is not None, (name, p.name)


def test_every_method_says_where_its_defaults_come_from():
    assert [name for name in methods.available() if not methods.defaults_source(name) and methods.hparams_of(name)] == []


@pytest.mark.parametrize("attrs,message", [
    ({"epoch_hparams": "warmup"}, "method 'bad_declaration': `epoch_hparams` must be a tuple of names, got 'warmup'"),
    ({"epoch_hparams": ("temperature",)}, "method 'bad_declaration': `epoch_hparams` names 'temperature', which must "
                                         "be an int hyper-parameter with an int default"),
    ({"epoch_hparams": ("warmup",), "reference_epochs": 0},
     "method 'bad_declaration': `reference_epochs` must be an int >= 1, got 0"),
    ({"batch_statistics": 1}, "method 'bad_declaration': `batch_statistics` must be a bool, got 1"),
    ({"regions": 1}, "method 'bad_declaration': `regions` must be a bool, got 1"),
    ({"regions": True}, "method 'bad_declaration': with `regions`, the instance's `scales` must be a non-empty tuple "
                        "of ints, got None"),
    ({"teacher_artifact": "matrix"}, "method 'bad_declaration': a `teacher_artifact` needs a classmethod "
                                     "build_teacher_artifact(inputs) and a method set_teacher_artifact(artifact)"),
])
def test_declarations_are_checked(attrs, message):
    import torch.nn.functional as F
    from torch import nn

    def init(self, temperature: float = 4.0, warmup: int = 20):
        nn.Module.__init__(self)

    def forward(self, student_logits, teacher_logits, targets, *, epoch):
        return {"ce": F.cross_entropy(student_logits, targets)}

    cls = type("BadDeclaration", (nn.Module,), {"__doc__": "A test loss.", "__init__": init, "forward": forward, **attrs})
    methods.register("bad_declaration")(cls)
    try:
        with pytest.raises(AssertionError) as exc:
            conformance.check("bad_declaration")
        assert str(exc.value) == message
    finally:
        methods.unregister("bad_declaration")
