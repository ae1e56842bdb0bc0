"""Every registered method, built-in or dropped in by a user, must pass the conformance checks.

Set KDBENCH_METHODS_PATH to a folder of your own method files to check them too.
"""

import pytest

from kdbench import conformance, methods


@pytest.mark.parametrize("name", methods.available())
def test_method_conforms(name):
    conformance.check(name)


def test_every_method_has_a_description_and_typed_defaults():
    for name in methods.available():
        info = methods.describe(name)
        assert info.summary and info.summary != "(no description)", name
        for p in info.hparams:
            assert not p.required and p.type is not None, (name, p.name)
