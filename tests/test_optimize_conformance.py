"""Optimisation conformance checks pass on the reference runtimes and fail on planted bugs:
a noisy or down-cast runtime, a static-batch export, a weight-destroying quantiser, a
"quantiser" that does not shrink anything, a silent ORT provider fallback, a corrupt ONNX
file, tracing of data-dependent control flow, and a detector that only probes the example."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from reference.optimize import conformance, onnx_export, onnx_runtime, quantize, runtimes, torchscript, workloads  # noqa: E402
from reference.optimize.compile import export_program, load_program  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated"),
              pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor"),
              pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")]
DRAWN = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
batch_sizes = st.lists(st.integers(min_value=1, max_value=150), min_size=1, max_size=3)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):  # type: ignore[no-untyped-def]
    return workloads.load("mlp", "tiny", 0, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def onnx_files(mlp, tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("onnx")
    example = mlp.batch(conformance.EXPORT_BATCH)
    return {exporter: onnx_export.export(mlp.model, example, folder / f"{exporter}.onnx", exporter)
            for exporter in onnx_export.EXPORTERS}


def inputs_for(workload, sizes, seed=None):  # type: ignore[no-untyped-def]
    """Eval rows at each batch size; with a seed, drawn rows plus a little noise."""
    if seed is None:
        return [workload.batch(b) for b in sizes]
    generator = torch.Generator().manual_seed(seed)
    x = workload.split.x_eval
    rows = [torch.randint(0, len(x), (b,), generator=generator) for b in sizes]
    return [x[r] + 0.05 * torch.rand(len(r), *x.shape[1:], generator=generator) for r in rows]


# -- tensors vs the fp64 golden run ---------------------------------------------------------

@pytest.fixture(scope="module")
def torch_runtimes(mlp, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Eager, scripted and traced (both saved and loaded back), and torch.export's .pt2."""
    folder = tmp_path_factory.mktemp("converted")
    example = mlp.batch(conformance.EXPORT_BATCH)
    found = {"eager": mlp.model}
    for mode in torchscript.MODES:
        converted = torchscript.convert(mlp.model, example, mode).module
        found[mode], _ = torchscript.save_and_load(converted, folder / f"{mode}.pt")
    export_program(mlp.model, example, folder / "m.pt2")
    found["export"] = load_program(folder / "m.pt2")
    return {name: runtimes.torch_module(module, name) for name, module in found.items()}


@DRAWN
@given(sizes=batch_sizes, seed=seeds)
def test_eager_torchscript_and_export_match_golden_at_any_batch_size(mlp, torch_runtimes, sizes, seed) -> None:  # type: ignore[no-untyped-def]
    for runtime in torch_runtimes.values():
        check = conformance.matches_golden(runtime, mlp.model, inputs_for(mlp, sizes, seed))
        assert check.passed, (runtime.name, check)
        assert check.observed is not None and check.observed < 1e-5


@DRAWN
@given(sizes=batch_sizes, seed=seeds)
def test_onnx_runtime_matches_golden_for_both_exporters(mlp, onnx_files, sizes, seed) -> None:  # type: ignore[no-untyped-def]
    for exported in onnx_files.values():
        runtime = onnx_runtime.ort_runtime(exported.path, "ort", "fp32")
        check = conformance.matches_golden(runtime, mlp.model, inputs_for(mlp, sizes, seed))
        assert check.passed, check


@pytest.fixture(scope="module")
def int8_runtimes(mlp, onnx_files, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Every INT8 path: torch.ao dynamic/static, torchao both configs, ORT dynamic/QDQ/QOperator."""
    folder = tmp_path_factory.mktemp("int8")
    modules = {"torch.ao dynamic": quantize.dynamic_ao(mlp.model, mlp.batch(2)),
               "torch.ao static": quantize.static_ao(mlp.model, mlp.calibration),
               **{f"torchao {c}": quantize.torchao_quantize(mlp.model, c) for c in quantize.TORCHAO_CONFIGS}}
    found = [runtimes.torch_module(module, name, precision="int8") for name, module in modules.items()]
    ready = onnx_runtime.preprocess(onnx_files["dynamo"].path, folder / "pre.onnx")
    files = {"dynamic": onnx_runtime.quantize_dynamic(ready, folder / "dynamic.onnx")}
    files |= {fmt: onnx_runtime.quantize_static(ready, folder / f"{fmt}.onnx", mlp.calibration, fmt)
              for fmt in onnx_runtime.STATIC_FORMATS}
    return found + [onnx_runtime.ort_runtime(path, f"ort {name}", "int8") for name, path in files.items()]


@DRAWN
@given(sizes=batch_sizes, seed=seeds)
def test_every_int8_runtime_runs_at_any_batch_size(mlp, int8_runtimes, sizes, seed) -> None:  # type: ignore[no-untyped-def]
    for runtime in int8_runtimes:
        check = conformance.matches_golden(runtime, mlp.model, inputs_for(mlp, sizes, seed))
        assert check.passed, (runtime.name, check)


@pytest.mark.breaks("runtime.matches_fp64_golden")
def test_a_noisy_runtime_fails_the_fp32_tier(mlp) -> None:  # type: ignore[no-untyped-def]
    runtime = runtimes.torch_module(mlp.model, "noisy")
    clean = runtime.to_tensor
    runtime.to_tensor = lambda out: clean(out) + 1e-3 * torch.randn_like(clean(out))
    check = conformance.matches_golden(runtime, mlp.model, inputs_for(mlp, [1, 5]))
    assert not check.passed and check.observed > check.tolerance


@pytest.mark.breaks("runtime.matches_fp64_golden")
def test_fp16_weights_claiming_fp32_fail_but_pass_their_own_tier(mlp) -> None:  # type: ignore[no-untyped-def]
    half = copy.deepcopy(mlp.model).half()
    runtime = runtimes.torch_module(half, "half")
    runtime.prepare = lambda x: x.half()
    inputs = inputs_for(mlp, [1, 9])
    assert not conformance.matches_golden(runtime, mlp.model, inputs).passed
    runtime.precision = "fp16"
    assert conformance.matches_golden(runtime, mlp.model, inputs).passed


@pytest.mark.breaks("runtime.matches_fp64_golden")
def test_an_export_without_a_dynamic_batch_axis_fails_at_unseen_sizes(mlp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "static.onnx"
    torch.onnx.export(mlp.model, (mlp.batch(8),), str(path), dynamo=False, input_names=[onnx_export.INPUT_NAME],
                      output_names=[onnx_export.OUTPUT_NAME])  # planted bug: no dynamic_axes
    runtime = onnx_runtime.ort_runtime(path, "static", "fp32")
    check = conformance.matches_golden(runtime, mlp.model, inputs_for(mlp, [1, 8]))
    assert not check.passed
    assert "batch 1" in check.detail


@pytest.mark.breaks("runtime.runs_at_unseen_batch_sizes")
def test_int8_is_judged_by_running_not_by_tensors(mlp) -> None:  # type: ignore[no-untyped-def]
    runtime = runtimes.torch_module(quantize.dynamic_ao(mlp.model, mlp.batch(2)), "int8", precision="int8")
    assert conformance.matches_golden(runtime, mlp.model, inputs_for(mlp, [1, 33])).passed
    runtime.to_tensor = lambda out: out * float("nan")  # planted bug: a kernel that overflows
    check = conformance.matches_golden(runtime, mlp.model, inputs_for(mlp, [1, 33]))
    assert not check.passed and check.name == "runtime.runs_at_unseen_batch_sizes"


# -- accuracy vs fp32 -----------------------------------------------------------------------

def correct(workload, module):  # type: ignore[no-untyped-def]
    split = workload.split
    return runtimes.correct_predictions(runtimes.torch_module(module, "m"), split.x_eval, split.y_eval)


def crude_quantiser(model):  # type: ignore[no-untyped-def]
    """Planted bug: one shared scale for every weight, 3 levels (what an int8 path with a
    wrong bit width or scale would do)."""
    broken = copy.deepcopy(model)
    with torch.no_grad():
        for p in broken.parameters():
            p.copy_(torch.round(p / p.abs().max()) * p.abs().max())
    return broken


@pytest.mark.breaks("accuracy.mlperf_99pct_of_fp32")
def test_int8_keeps_99pct_of_fp32_accuracy_and_a_crude_quantiser_does_not(mlp) -> None:  # type: ignore[no-untyped-def]
    fp32 = correct(mlp, mlp.model)
    assert conformance.keeps_fp32_accuracy(fp32, correct(mlp, quantize.dynamic_ao(mlp.model, mlp.batch(2)))).passed
    check = conformance.keeps_fp32_accuracy(fp32, correct(mlp, crude_quantiser(mlp.model)))
    assert not check.passed and check.observed < conformance.MLPERF_FRACTION


def test_every_low_precision_runtime_keeps_99pct_of_fp32_accuracy_on_digits(mlp, int8_runtimes) -> None:  # type: ignore[no-untyped-def]
    """MLPerf's rule for every quantised path the suite ships (torch.ao dynamic and static,
    torchao's configs, ORT dynamic, QDQ and QOperator) and for bf16 autocast, on the pinned
    digits eval split: not only the one quantiser the test above feeds it."""
    split = mlp.split
    fp32 = runtimes.correct_predictions(runtimes.torch_module(mlp.model, "eager"), split.x_eval, split.y_eval)
    bf16 = runtimes.torch_module(mlp.model, "eager bf16", precision="bf16", autocast=torch.bfloat16)
    judged = [*int8_runtimes, bf16]
    assert len(int8_runtimes) == 3 + len(quantize.TORCHAO_CONFIGS) + len(onnx_runtime.STATIC_FORMATS)
    assert len(split.y_eval) >= 300  # a real eval set: one wrong item is under 1%
    for runtime in judged:
        check = conformance.keeps_fp32_accuracy(fp32, runtimes.correct_predictions(runtime, split.x_eval, split.y_eval))
        assert check.passed, (runtime.name, check)


def test_accuracy_delta_is_paired_with_a_ci_around_it(mlp) -> None:  # type: ignore[no-untyped-def]
    fp32 = correct(mlp, mlp.model)
    worse = fp32.clone()
    worse[:20] = False
    accuracy, delta = conformance.accuracy_metrics(fp32, worse)
    expected = float(worse.float().mean() - fp32.float().mean())
    assert delta.value == pytest.approx(expected)
    assert delta.ci_low <= delta.value <= delta.ci_high < 0
    assert accuracy.value == pytest.approx(float(worse.float().mean()))


# -- size -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp_small_model():  # type: ignore[no-untyped-def]
    """Untrained is enough for sizes: the small MLP, whose Linear weights dominate."""
    model, _, _ = workloads.untrained("mlp", "small", 0)
    return model.eval()


@pytest.mark.parametrize("quantiser", [lambda m: quantize.dynamic_ao(m, torch.zeros(2, 64)),
                                       lambda m: quantize.torchao_quantize(m, "int8_weight_only")],
                         ids=["torch.ao", "torchao"])
def test_int8_makes_linear_weights_about_4x_smaller(mlp_small_model, quantiser) -> None:  # type: ignore[no-untyped-def]
    fp32 = runtimes.state_dict_bytes(mlp_small_model)
    check = conformance.int8_shrinks_linear_weights(runtimes.state_dict_bytes(quantiser(mlp_small_model)), fp32,
                                                    runtimes.linear_weight_bytes(mlp_small_model))
    assert check is not None and check.passed, check
    assert 0.65 < check.observed <= 0.76


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["kept-fp32", "fp16-not-int8"])
@pytest.mark.breaks("size.int8_linear_weights_4x_smaller")
def test_a_quantiser_that_does_not_reach_int8_fails_the_size_check(mlp_small_model, dtype) -> None:  # type: ignore[no-untyped-def]
    fake = copy.deepcopy(mlp_small_model).to(dtype)  # planted bug: "quantised" in name only
    fp32 = runtimes.state_dict_bytes(mlp_small_model)
    check = conformance.int8_shrinks_linear_weights(runtimes.state_dict_bytes(fake), fp32,
                                                    runtimes.linear_weight_bytes(mlp_small_model))
    assert check is not None and not check.passed and check.observed < 0.55


@pytest.mark.parametrize("sizes", [(90_000, 1_000_000, 100_000), (9_000, 20_000, 15_000)],
                         ids=["small-share", "too-few-bytes"])
def test_size_check_is_not_claimed_where_overheads_would_swamp_it(sizes) -> None:  # type: ignore[no-untyped-def]
    assert conformance.int8_shrinks_linear_weights(*sizes) is None


def test_onnx_int8_dynamic_file_is_about_4x_smaller(mlp_small_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    exported = onnx_export.export(mlp_small_model, torch.zeros(8, 64), tmp_path / "m.onnx", "legacy")
    quantized = onnx_runtime.quantize_dynamic(onnx_runtime.preprocess(exported.path, tmp_path / "p.onnx"),
                                              tmp_path / "q.onnx")
    check = conformance.int8_shrinks_linear_weights(onnx_export.file_bytes(quantized), exported.size_bytes,
                                                    runtimes.linear_weight_bytes(mlp_small_model))
    assert check is not None and check.passed, check


# -- ONNX provenance ------------------------------------------------------------------------

def test_requested_cpu_provider_is_used(onnx_files) -> None:  # type: ignore[no-untyped-def]
    _, info = onnx_runtime.session(onnx_files["legacy"].path, "cpu")
    assert conformance.provider_is_requested(info).passed


@pytest.mark.filterwarnings("ignore:Specified provider")
@pytest.mark.breaks("ort.provider_used_is_requested")
def test_a_silent_fallback_to_cpu_fails_the_provider_check(onnx_files) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this host has the CUDA EP: no fallback to plant")
    _, info = onnx_runtime.session(onnx_files["legacy"].path, "cuda")  # ORT quietly runs on CPU
    assert info["provider_used"] == "CPUExecutionProvider"
    check = conformance.provider_is_requested(info)
    assert not check.passed and "CUDAExecutionProvider" in check.reference


@pytest.mark.breaks("onnx.checker_full_check")
def test_onnx_checker_passes_on_exports_and_fails_on_a_corrupt_file(onnx_files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import onnx

    for exported in onnx_files.values():
        assert conformance.onnx_checker_passes(onnx_export.checker_error(exported.path), exported.opset).passed
    model = onnx.load(str(onnx_files["legacy"].path))
    model.graph.node[0].input[0] = "no_such_tensor"  # planted bug: a dangling edge
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    check = conformance.onnx_checker_passes(onnx_export.checker_error(broken), 0)
    assert not check.passed and "no_such_tensor" in check.detail


# -- TorchScript control flow ---------------------------------------------------------------

def script(model, example):  # type: ignore[no-untyped-def]
    return torchscript.convert(model, example, "script")


def trace(model, example):  # type: ignore[no-untyped-def]
    return torchscript.convert(model, example, "trace")


@pytest.mark.breaks("torchscript.keeps_data_dependent_branches")
def test_scripting_keeps_both_branches_and_tracing_does_not(mlp) -> None:  # type: ignore[no-untyped-def]
    example = mlp.batch(8)
    assert conformance.keeps_data_dependent_branches(script, mlp.model, example).passed
    check = conformance.keeps_data_dependent_branches(trace, mlp.model, example)  # planted bug: trace
    assert not check.passed and "tracer said" in check.detail


@pytest.mark.breaks("torchscript.trace_pitfall_flagged")
def test_the_trace_pitfall_is_flagged_and_a_detector_probing_only_the_example_misses_it(mlp) -> None:  # type: ignore[no-untyped-def]
    example = mlp.batch(8)
    assert conformance.trace_pitfall_flagged(torchscript.compare_with_eager, mlp.model, example).passed

    def probe_only_the_example(eager, converted, probes):  # type: ignore[no-untyped-def]
        return torchscript.compare_with_eager(eager, converted, probes[:1])

    assert not conformance.trace_pitfall_flagged(probe_only_the_example, mlp.model, example).passed


def test_unseen_batch_sizes_include_1_and_never_the_export_batch() -> None:
    for seed in range(20):
        sizes = conformance.unseen_batch_sizes(seed)
        assert sizes[0] == 1 and conformance.EXPORT_BATCH not in sizes and len(sizes) >= 2
