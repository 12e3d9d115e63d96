"""Training conformance checks pass on the reference and fail on planted bugs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from reference.training import conformance, workloads  # noqa: E402
from reference.training.accumulation import accumulation_step  # noqa: E402
from reference.training.amp import AmpTrainer  # noqa: E402


def passed(found: list) -> bool:
    return all(check.passed for check in found)


def accumulate_dividing_by_k(model, optimizer, loss_fn, x, y, micro_batches):  # type: ignore[no-untyped-def]
    """Planted bug: weights every micro-batch 1/k, wrong when the last one is short."""
    optimizer.zero_grad(set_to_none=True)
    for xm, ym in zip(torch.tensor_split(x, micro_batches), torch.tensor_split(y, micro_batches)):
        (loss_fn(model(xm), ym) / micro_batches).backward()
    optimizer.step()


def accumulate_without_scaling(model, optimizer, loss_fn, x, y, micro_batches):  # type: ignore[no-untyped-def]
    """Planted bug: sums micro-batch mean losses, a gradient k times too large."""
    optimizer.zero_grad(set_to_none=True)
    for xm, ym in zip(torch.tensor_split(x, micro_batches), torch.tensor_split(y, micro_batches)):
        loss_fn(model(xm), ym).backward()
    optimizer.step()


@pytest.mark.parametrize("model_name", ["mlp", "cnn", "transformer"])
@pytest.mark.parametrize("micro_batches", [1, 3, 4])
def test_accumulation_matches_full_batch(model_name: str, micro_batches: int) -> None:
    found = conformance.accumulation_matches_full_batch(accumulation_step, model_name, micro_batches)
    assert passed(found), found
    assert found[0].observed < 1e-5


@pytest.mark.parametrize("broken", [accumulate_dividing_by_k, accumulate_without_scaling])
@pytest.mark.breaks("accumulation.gradients_equal_full_batch", "accumulation.parameters_equal_full_batch")
def test_accumulation_check_catches_planted_bugs(broken) -> None:  # type: ignore[no-untyped-def]
    assert not passed(conformance.accumulation_matches_full_batch(broken, "mlp", 3))


def fp16_trainer(model, optimizer):  # type: ignore[no-untyped-def]
    return AmpTrainer(model, optimizer, workloads.loss_fn, device_type="cpu", dtype="fp16")


class UnscaledFp16Trainer(AmpTrainer):
    """Planted bug: fp16 autocast but the scaler is never used."""

    def step(self, x, y):  # type: ignore[no-untyped-def]
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.detach().float()


def test_grad_scaler_skips_an_inf_step_and_lowers_the_scale() -> None:
    found = conformance.scaler_skips_inf_step(fp16_trainer)
    assert passed(found), found


@pytest.mark.breaks("amp.inf_gradient_lowers_scale", "amp.inf_gradient_skips_step")
def test_inf_check_catches_an_unscaled_fp16_trainer() -> None:
    found = conformance.scaler_skips_inf_step(
        lambda m, o: UnscaledFp16Trainer(m, o, workloads.loss_fn, device_type="cpu", dtype="fp16"))
    assert [c.passed for c in found] == [False, False]


@pytest.mark.breaks("amp.bf16_uses_no_scaler")
def test_bf16_uses_no_scaler_and_the_check_sees_a_planted_one() -> None:
    model = workloads.build("mlp", "tiny").model
    trainer = AmpTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), workloads.loss_fn,
                         device_type="cpu", dtype="bf16")
    assert conformance.bf16_uses_no_scaler(trainer).passed
    trainer.scaler = torch.amp.GradScaler("cpu")
    assert not conformance.bf16_uses_no_scaler(trainer).passed


@pytest.fixture(scope="module")
def fp32_cnn_run() -> conformance.Convergence:
    return conformance.train_to_convergence(workloads.build("cnn", "tiny"), conformance.fp32_step_factory, epochs=10)


def test_baseline_reaches_the_stated_digits_accuracy(fp32_cnn_run: conformance.Convergence) -> None:
    check = conformance.baseline_reaches_accuracy(fp32_cnn_run)
    assert check.passed and check.tolerance == 0.95, check


@pytest.mark.breaks("baseline.digits_eval_accuracy")
def test_accuracy_check_catches_training_on_shuffled_labels() -> None:
    def shuffled_labels(model, optimizer):  # type: ignore[no-untyped-def]
        step = conformance.fp32_step_factory(model, optimizer)
        return lambda x, y: step(x, y[torch.randperm(len(y))])

    run = conformance.train_to_convergence(workloads.build("cnn", "tiny"), shuffled_labels, epochs=3)
    assert not conformance.baseline_reaches_accuracy(run).passed


@pytest.fixture(scope="module")
def fp32_mlp_run() -> conformance.Convergence:
    return conformance.train_to_convergence(workloads.build("mlp", "small"), conformance.fp32_step_factory, epochs=8)


@pytest.mark.breaks("amp.eval_accuracy_tracks_fp32", "amp.loss_curve_tracks_fp32")
def test_bf16_tracks_fp32_and_the_check_catches_a_frozen_optimizer(fp32_mlp_run: conformance.Convergence) -> None:
    workload = workloads.build("mlp", "small")

    def bf16(model, optimizer):  # type: ignore[no-untyped-def]
        return AmpTrainer(model, optimizer, workloads.loss_fn, device_type="cpu", dtype="bf16").step

    assert passed(conformance.amp_tracks_fp32(fp32_mlp_run, conformance.train_to_convergence(workload, bf16, 8)))

    def never_steps(model, optimizer):  # type: ignore[no-untyped-def]
        trainer = AmpTrainer(model, optimizer, workloads.loss_fn, device_type="cpu", dtype="bf16")
        trainer.optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # planted bug: updates nothing
        return trainer.step

    broken = conformance.train_to_convergence(workload, never_steps, 8)
    assert not passed(conformance.amp_tracks_fp32(fp32_mlp_run, broken))


def test_conformance_numbers_do_not_depend_on_how_many_timed_steps_ran() -> None:
    """Same seed, same numbers, bit for bit: the accuracy training starts from untouched
    initial weights whatever the timing loop did before it."""
    from suite import registry
    from suite.context import RunContext
    from suite.profiles import Budget

    registry.discover()
    accuracies = []
    for samples in (5, 60):
        budget = Budget(warmup_calls=1, warmup_s=0.0, min_samples=samples, max_samples=samples, max_time_s=1e-9,
                        threads=1)
        ctx = RunContext(params={"model": "mlp", "size": "small", "batch_size": 64, "device": "cpu", "epochs": 2},
                         budget=budget, profile="quick", seed=0)
        scenario = registry.get("training.baseline")()
        scenario.setup(ctx)
        metrics = {m.name: m for m in scenario.measure(ctx)}
        accuracies.append((metrics["eval_accuracy"].value, tuple(scenario.run.loss_curve)))
    assert accuracies[0] == accuracies[1]
