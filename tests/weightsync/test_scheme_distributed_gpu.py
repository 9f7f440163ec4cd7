"""The distributed scheme with models on GPUs: NCCL between two GPUs, a host copy otherwise.

The GPU cases run only where torch sees GPUs (the CPU-only CI skips them; they are meant for a
GPU machine). NCCL refuses two ranks on one GPU, so the NCCL case needs two.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.helpers.distributed_workers import serve_broadcasts
from tests.helpers.models import assert_same_state, make_model, perturb, state_of
from tests.helpers.workers import expect_reply
from weightsync import DistributedWeightSyncScheme
from weightsync.transports.c10d import nccl_usable

needs_a_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_two_gpus = pytest.mark.skipif(
    torch.cuda.device_count() < 2 or not nccl_usable(), reason="needs two GPUs and NCCL"
)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _on_cpu(model) -> dict:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state_of(model).items()}


def _run(procs, trainer_device: str, worker_device: str, **options) -> list:
    """Connect a trainer model on ``trainer_device`` to one worker model on ``worker_device``,
    send two updates, check each arrives whole on the worker's device; return the warnings."""
    trainer_model = make_model(seed=0).to(trainer_device)
    scheme = DistributedWeightSyncScheme(num_workers=1, timeout=60, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scheme.init_on_sender("policy", model=trainer_model)
        here, there = procs.pipe()
        procs.start(serve_broadcasts, scheme, 0, there, 1, worker_device)
        scheme.connect()
        for version in (1, 2, 3):
            if version > 1:
                perturb(trainer_model, version)
                scheme.send()
            _, got, state, facts = expect_reply(here, f"report version {version}")
            assert got == version
            assert_same_state(state, _on_cpu(trainer_model), f"worker, version {version}")
            assert facts["devices"] == {str(torch.device(worker_device))}
    assert {str(t.device) for t in trainer_model.parameters()} == {trainer_device}
    scheme.shutdown()
    assert expect_reply(here, "close") == ("closed",)
    return [str(w.message) for w in caught]


@needs_two_gpus
def test_a_gpu_model_crosses_over_nccl_into_the_workers_gpu(procs):
    caught = _run(procs, "cuda:0", "cuda:1")
    assert not [w for w in caught if "host memory" in w], caught


@needs_a_gpu
def test_a_cpu_worker_gets_a_gpu_model_through_a_host_copy_with_a_warning(procs):
    caught = _run(procs, "cuda:0", "cpu")
    assert any("worker(s) [0] cannot take the model on a GPU" in w for w in caught), caught


@needs_a_gpu
def test_a_worker_on_the_trainers_gpu_gets_a_host_copy(procs):
    """NCCL refuses two ranks on one GPU: a worker sharing the trainer's is sent a host copy."""
    caught = _run(procs, "cuda:0", "cuda:0")
    assert any("their GPU is the trainer's" in w for w in caught), caught


@needs_a_gpu
def test_backend_gloo_sends_a_gpu_model_through_host_memory(procs):
    caught = _run(procs, "cuda:0", "cuda:0", backend="gloo")
    assert any("cannot send it over NCCL" in w for w in caught), caught


@pytest.mark.skipif(nccl_usable(), reason="this process has NCCL")
def test_backend_nccl_without_nccl_is_an_error_naming_the_fix():
    scheme = DistributedWeightSyncScheme(num_workers=1, backend="nccl")
    with pytest.raises(RuntimeError, match=r"backend='nccl'.*no CUDA device.*backend=None"):
        scheme.init_on_sender("policy", model=make_model(seed=0))
