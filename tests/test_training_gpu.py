"""The training techniques on CUDA: device clock, GradScaler, AMP convergence (run with
`pytest -m gpu` on a CUDA host)."""

from __future__ import annotations

import pytest

from tests.conftest import requires_cuda

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from reference.training import conformance, workloads  # noqa: E402
from reference.training.amp import AmpTrainer  # noqa: E402
from suite.profiles import Budget  # noqa: E402
from suite.timing import time_calls  # noqa: E402

pytestmark = [pytest.mark.gpu, requires_cuda]


def test_cuda_steps_are_timed_with_the_device_clock() -> None:
    a = torch.randn(2048, 2048, device="cuda")
    budget = Budget(warmup_calls=3, warmup_s=0.0, min_samples=20, max_samples=20, max_time_s=1.0)
    timed = time_calls(lambda: a @ a, budget, device="cuda")
    assert timed.clock == "device" and len(timed.times) == 20
    assert min(timed.times) > 0 and timed.overhead < min(timed.times)


def test_grad_scaler_skips_an_inf_step_on_cuda() -> None:
    def fp16(model, optimizer):  # type: ignore[no-untyped-def]
        return AmpTrainer(model, optimizer, workloads.loss_fn, device_type="cuda", dtype="fp16")

    found = conformance.scaler_skips_inf_step(fp16, device="cuda")
    assert all(c.passed for c in found), found


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_amp_tracks_fp32_on_cuda(dtype: str) -> None:
    workload = workloads.build("mlp", "small").to("cuda")
    fp32 = conformance.train_to_convergence(workload, conformance.fp32_step_factory, epochs=8)

    def amp(model, optimizer):  # type: ignore[no-untyped-def]
        return AmpTrainer(model, optimizer, workloads.loss_fn, device_type="cuda", dtype=dtype).step

    found = conformance.amp_tracks_fp32(fp32, conformance.train_to_convergence(workload, amp, epochs=8))
    assert all(c.passed for c in found), found
    assert conformance.baseline_reaches_accuracy(fp32).passed


def test_interleaved_contenders_are_both_timed_on_the_device_clock() -> None:
    from suite.timing import time_interleaved

    small, large = torch.randn(256, 256, device="cuda"), torch.randn(4096, 4096, device="cuda")
    budget = Budget(warmup_calls=3, warmup_s=0.0, min_samples=20, max_samples=20, max_time_s=1.0)
    timed = time_interleaved({"small": lambda: small @ small, "large": lambda: large @ large}, budget, "cuda")
    assert {t.clock for t in timed.values()} == {"device"}
    assert all(len(t.times) == 20 for t in timed.values())
    assert sorted(timed["small"].times)[10] < sorted(timed["large"].times)[10]
