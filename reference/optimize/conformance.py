"""Conformance checks for optimised runtimes. Each takes the thing under test as an argument,
so a test can hand it a deliberately broken one (a planted bug) and watch the check fail.

- tensors: every runtime against the fp64 eager golden run, within its dtype tier, at batch
  sizes never seen at export (INT8 has no tensor tier: it is judged by accuracy);
- accuracy: delta vs fp32 eager on the pinned eval split with a paired bootstrap CI, and
  MLPerf's verdict ">= 99% of fp32 accuracy";
- size: INT8 must make Linear weights about 4x smaller in the shipped artefact;
- provenance: ONNX Runtime must run on the provider asked for; onnx.checker must pass;
- TorchScript: data-dependent control flow must survive scripting, and tracing's silent
  freeze of one branch must be detected and warned about.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from reference.optimize import torchscript
from reference.optimize.models import RangeGuard
from reference.optimize.runtimes import Runtime, golden_outputs
from suite import checks, stats
from suite.schema import Check, Metric

# Every check id this family emits (suite.checks: `<part>` is filled in at run time); each
# one has a planted-bug test marked `breaks(id)`.
CHECK_IDS = (
    "runtime.runs_at_unseen_batch_sizes",
    "runtime.matches_fp64_golden",
    "accuracy.mlperf_99pct_of_fp32",
    "size.int8_linear_weights_4x_smaller",
    "ort.provider_used_is_requested",
    "onnx.checker_full_check",
    "torchscript.keeps_data_dependent_branches",
    "torchscript.trace_pitfall_flagged",
)

EXPORT_BATCH = 8  # the example batch every exporter and tracer sees
MLPERF_FRACTION = 0.99  # MLPerf inference: a variant must keep >= 99% of fp32 accuracy
# INT8 weights are 1/4 of fp32: a 4x shrink saves 0.75 of the fp32 Linear-weight bytes
# (measured 0.70-0.76 with scales, zero points and fp32 biases). 16-bit weights would save
# 0.5, so 0.6 separates "about 4x" from a half-precision mistake.
LINEAR_BYTES_SAVED_BOUND = 0.6
# Claimed only where Linear weights dominate the artefact and are large enough that per-tensor
# serialisation overhead (about a kilobyte each) does not swamp them.
LINEAR_SHARE_FOR_SIZE_CHECK = 0.5
LINEAR_BYTES_FOR_SIZE_CHECK = 64 * 1024


def unseen_batch_sizes(seed: int, draws: int = 3, largest: int = 129) -> list[int]:
    """Batch 1 plus seeded draws, none equal to the export batch."""
    rng = np.random.default_rng(seed)
    drawn = {1, *(int(b) for b in rng.integers(2, largest + 1, size=draws))} - {EXPORT_BATCH}
    return sorted(drawn)


def matches_golden(runtime: Runtime, model: nn.Module, inputs: Sequence[torch.Tensor]) -> Check:
    """The runtime on every input batch vs fp64 eager, within the runtime's dtype tier. A
    quantised runtime (a precision with no tensor tier: int8, int4, ...) only has to run at
    every batch size with finite outputs of the right shape: it is judged by accuracy."""
    outputs, goldens, failures = [], [], []
    for x in inputs:
        golden = golden_outputs(model, x)
        try:
            out = runtime.predict(x)
        except Exception as exc:  # noqa: BLE001 - a runtime that breaks at a batch size fails the check
            failures.append(f"batch {len(x)}: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        if out.shape != golden.shape:
            failures.append(f"batch {len(x)}: output shape {tuple(out.shape)}, expected {tuple(golden.shape)}")
            continue
        outputs.append(out)
        goldens.append(golden)
    sizes = f"batch sizes {[len(x) for x in inputs]} (export saw {EXPORT_BATCH})"
    if runtime.precision not in checks.TIERS:
        finite = all(bool(torch.isfinite(o).all()) for o in outputs)
        detail = "; ".join(failures) or f"{runtime.precision} is judged by accuracy; finite outputs at {sizes}"
        return checks.holds("runtime.runs_at_unseen_batch_sizes", not failures and finite, "fp64 eager shapes", detail)
    if failures:
        return Check(name="runtime.matches_fp64_golden", passed=False, tolerance=checks.TIERS[runtime.precision],
                     reference="fp64 golden", detail="; ".join(failures))
    with torch.no_grad():
        baseline = torch.cat([model.eval()(x) for x in inputs])
    check = checks.close_to_golden("runtime.matches_fp64_golden", torch.cat(outputs), torch.cat(goldens),
                                   runtime.precision, baseline=baseline)
    check.detail += f"; {sizes}"
    return check


def accuracy_metrics(fp32_correct: torch.Tensor, correct: torch.Tensor) -> list[Metric]:
    """Accuracy with a bootstrap CI, and its delta vs fp32 on the same items (paired CI)."""
    delta, low, high = stats.paired_bootstrap_delta(fp32_correct.numpy(), correct.numpy())
    delta_metric = Metric(name="accuracy_delta", unit="fraction", higher_is_better=True, n=len(correct),
                          value=delta, median=delta, ci_low=low, ci_high=high)
    return [stats.proportion("accuracy", correct.numpy()), delta_metric]


def keeps_fp32_accuracy(fp32_correct: torch.Tensor, correct: torch.Tensor) -> Check:
    """MLPerf's closed-division rule: the variant keeps at least 99% of fp32 accuracy."""
    fp32, accuracy = float(fp32_correct.float().mean()), float(correct.float().mean())
    delta, low, high = stats.paired_bootstrap_delta(fp32_correct.numpy(), correct.numpy())
    return checks.at_least("accuracy.mlperf_99pct_of_fp32", accuracy / fp32 if fp32 else math.nan,
                           MLPERF_FRACTION, "fp32 eager on the pinned eval split",
                           f"accuracy {accuracy:.4f} vs fp32 {fp32:.4f} over {len(correct)} items; "
                           f"delta {delta:+.4f} [{low:+.4f}, {high:+.4f}] (paired bootstrap)")


def size_metrics(size: int, fp32_size: int) -> list[Metric]:
    return [stats.scalar("model_size", "bytes", False, size),
            stats.scalar("size_vs_fp32", "ratio", False, size / fp32_size)]


def int8_shrinks_linear_weights(size: int, fp32_size: int, linear_bytes: int) -> Check | None:
    """Bytes saved vs the fp32 artefact, as a share of the fp32 Linear weights (0.75 = 4x).
    None where Linear weights are too small a share of the model for the test to mean anything."""
    if linear_bytes < max(LINEAR_SHARE_FOR_SIZE_CHECK * fp32_size, LINEAR_BYTES_FOR_SIZE_CHECK):
        return None
    saved = (fp32_size - size) / linear_bytes
    return checks.at_least("size.int8_linear_weights_4x_smaller", saved, LINEAR_BYTES_SAVED_BOUND,
                           "fp32 artefact in the same format",
                           f"{size} vs {fp32_size} bytes; saved {saved:.3f} of {linear_bytes} fp32 Linear-weight "
                           f"bytes (0.75 = exactly 4x smaller)")


def provider_is_requested(info: dict) -> Check:
    """A silent ONNX Runtime fallback (CUDA EP missing its libraries, say) becomes a failure."""
    return checks.holds("ort.provider_used_is_requested", info["provider_used"] == info["provider_requested"],
                        f"requested {info['provider_requested']}",
                        f"used {info['provider_used']}; available {info['providers_available']}")


def onnx_checker_passes(error: str | None, opset: int) -> Check:
    return checks.holds("onnx.checker_full_check", error is None, "onnx.checker.check_model(full_check=True)",
                        error[:500] if error else f"opset {opset}")


Convert = Callable[[nn.Module, torch.Tensor], torchscript.Converted]
Compare = Callable[[nn.Module, torchscript.Converted, Sequence[torch.Tensor]], torchscript.Divergence]


def range_probes(example: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An in-range batch (the example's branch) and the same batch scaled out of range."""
    inside = example / example.abs().max().clamp_min(1e-12)
    return inside, inside * 4.0


def keeps_data_dependent_branches(convert: Convert, model: nn.Module, example: torch.Tensor) -> Check:
    """The converted RangeGuard(model) must agree with eager on both sides of its branch."""
    guarded = RangeGuard(model).eval()
    inside, outside = range_probes(example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torchscript.TraceDivergenceWarning)
        result = torchscript.compare_with_eager(guarded, convert(guarded, inside), [inside, outside])
    return checks.holds("torchscript.keeps_data_dependent_branches", not result.diverged,
                        "eager on in-range and out-of-range inputs", result.describe())


def trace_pitfall_flagged(compare: Compare, model: nn.Module, example: torch.Tensor) -> Check:
    """Tracing RangeGuard(model) on an in-range example freezes the no-rescale branch; the
    suite's comparison must notice on out-of-range inputs and warn."""
    guarded = RangeGuard(model).eval()
    inside, outside = range_probes(example)
    traced = torchscript.convert(guarded, inside, "trace")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torchscript.TraceDivergenceWarning)
        result = compare(guarded, traced, [inside, outside])
    warned = any(issubclass(w.category, torchscript.TraceDivergenceWarning) for w in caught)
    return checks.holds("torchscript.trace_pitfall_flagged", result.diverged and warned,
                        "eager on out-of-range inputs",
                        f"divergence {'found' if result.diverged else 'missed'}, "
                        f"warning {'emitted' if warned else 'missing'}: {result.describe()}")
