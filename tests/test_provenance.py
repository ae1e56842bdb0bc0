"""Provenance: every environment key on the CPU, quickly; the deterministic mode's flags and
environment variable; the recorder of ops without a deterministic implementation."""

from __future__ import annotations

import os
import sys
import time
import warnings

import pytest
import torch

from kdbench.runs import environment as provenance
from kdbench.train import determinism
from kdbench.train.determinism import DeterminismWarning, NondeterminismRecorder, set_deterministic

KEYS = {
    "kdbench", "torch", "cuda", "device_name", "git_commit", "git_dirty", "python", "hostname", "threads",
    "interop_threads", "cpu_name", "cpu_count", "cudnn", "gpu_count", "gpu_name", "gpu_capability", "driver",
    "matmul_allow_tf32", "cudnn_allow_tf32", "float32_matmul_precision", "cudnn_enabled", "cudnn_benchmark",
    "cudnn_deterministic", "deterministic_algorithms", "deterministic_warn_only", "cublas_workspace_config",
}


@pytest.fixture(autouse=True)
def default_mode(monkeypatch):
    """Each test starts and ends with PyTorch's defaults and no CUBLAS_WORKSPACE_CONFIG."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "unset-by-the-test")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")  # restored (absent or not) at teardown
    set_deterministic("cpu", False)
    yield
    set_deterministic("cpu", False)


def test_environment_on_cpu_has_every_key_and_is_fast():
    started = time.perf_counter()
    env = provenance.environment(torch.device("cpu"))
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = provenance.environment("cpu")
    cached = time.perf_counter() - started
    assert set(env) == KEYS and again == env
    assert first < 5 and cached < 0.5, (first, cached)
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    assert env["device_name"] and env["gpu_name"] is None and env["gpu_capability"] is None
    assert env["deterministic_algorithms"] is False and env["cudnn_deterministic"] is False
    if not torch.cuda.is_available():
        assert env["gpu_count"] == 0 and env["driver"] is None


def test_environment_records_the_deterministic_mode():
    set_deterministic("cpu")
    env = provenance.environment("cpu")
    assert (env["deterministic_algorithms"], env["deterministic_warn_only"], env["cudnn_deterministic"],
            env["cudnn_benchmark"], env["cublas_workspace_config"]) == (True, True, True, False, ":4096:8")


def test_set_deterministic_sets_and_resets_the_flags():
    torch.backends.cudnn.benchmark = True
    set_deterministic(torch.device("cpu"))
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    set_deterministic("cpu", False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert not torch.is_deterministic_algorithms_warn_only_enabled()


def test_a_deterministic_workspace_setting_is_kept(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    set_deterministic("cpu")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_cuda_already_initialised_leaves_the_variable_unset_and_warns_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        set_deterministic("cpu")  # cuBLAS does not matter on the CPU: no warning
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with pytest.warns(DeterminismWarning) as caught:
        set_deterministic(torch.device("cuda"))
    assert str(caught[0].message) == (
        "deterministic mode: CUDA was initialised before CUBLAS_WORKSPACE_CONFIG was set, so cuBLAS may not be "
        "deterministic in this process; start it with CUBLAS_WORKSPACE_CONFIG=:4096:8")
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_recorder_collects_ops_without_a_deterministic_implementation():
    # Tensor.put_ (accumulate=False) has no deterministic implementation, even on the CPU.
    set_deterministic("cpu")
    x = torch.zeros(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recorder's own filter wins for its alerts
        with NondeterminismRecorder() as recorder:
            for _ in range(3):
                x.put_(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))
            torch.zeros(3).index_add_(0, torch.tensor([0, 0]), torch.ones(2))  # deterministic on the CPU
            assert recorder.ops == ["put_"]
            # As PyTorch words a GPU op's alert (no other CPU op has one to trigger here).
            warnings.warn("nll_loss2d_forward_out_cuda_template does not have a deterministic implementation, but "
                          "you set 'torch.use_deterministic_algorithms(True, warn_only=True)'.", UserWarning)
    assert recorder.ops == ["put_", "nll_loss2d_forward_out_cuda_template"]


def test_recorder_passes_other_warnings_through():
    with pytest.warns(UserWarning, match="^something else$"):
        with NondeterminismRecorder() as recorder:
            warnings.warn("something else", UserWarning)
    assert recorder.ops == []


def test_recorder_sees_an_alert_already_shown_before_it():
    set_deterministic("cpu")
    x = torch.zeros(2)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("default")
        x.put_(torch.tensor([0]), torch.tensor([1.0]))  # shown once here ...
    for _ in range(2):  # ... and still recorded by each later recorder (a new cohort)
        with NondeterminismRecorder() as recorder:
            x.put_(torch.tensor([0]), torch.tensor([1.0]))
        assert recorder.ops == ["put_"]


def test_alert_op_names_the_op():
    assert determinism.alert_op(
        "adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you set "
        "'torch.use_deterministic_algorithms(True, warn_only=True)'. You can file an issue at ...") == \
        "adaptive_avg_pool2d_backward_cuda"
    assert determinism.alert_op(
        "Deterministic behavior was enabled with either `torch.use_deterministic_algorithms(True)` or "
        "`at::Context::setDeterministicAlgorithms(true)`, but this operation is not deterministic because it "
        "uses CuBLAS and you have set CUBLAS_WORKSPACE_CONFIG=None.") == determinism.CUBLAS_OP
    assert determinism.alert_op("torch.compile is unavailable here") is None


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """A fake `nvidia-smi` first on PATH, and no pynvml."""
    def install(body: str) -> None:
        smi = tmp_path / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\n{body}\n")
        smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    provenance.driver_version.cache_clear()
    yield install
    provenance.driver_version.cache_clear()


def test_driver_version_from_nvidia_smi(fake_smi):
    fake_smi('echo "550.54.15"; echo "550.54.15"')
    assert provenance.driver_version() == "550.54.15"


def test_driver_version_is_none_when_nvidia_smi_fails_or_hangs(fake_smi, monkeypatch):
    fake_smi("exit 9")
    assert provenance.driver_version() is None
    provenance.driver_version.cache_clear()
    monkeypatch.setattr(provenance, "_SMI_TIMEOUT", 0.2)
    fake_smi("sleep 5")
    started = time.perf_counter()
    assert provenance.driver_version() is None
    assert time.perf_counter() - started < 2
