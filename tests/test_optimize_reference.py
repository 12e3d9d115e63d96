"""The optimisation reference implementations on their own: workloads and their cache,
quantisation plumbing (fusion, static PTQ, engines), ONNX export/checker/size, ONNX Runtime
sessions and calibration, TorchScript conversion, and clear errors on bad input."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from torch import nn  # noqa: E402

from reference.optimize import (  # noqa: E402
    compile,
    data,
    models,
    onnx_export,
    onnx_runtime,
    quantize,
    runtimes,
    torchscript,
    workloads,
)
from reference.training import models as training_models  # noqa: E402
from tests.conftest import requires_cuda  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated"),
              pytest.mark.filterwarnings("ignore:torch.quantize_per_"),
              pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):  # type: ignore[no-untyped-def]
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def mlp(cache):  # type: ignore[no-untyped-def]
    return workloads.load("mlp", "tiny", 0, cache)


# -- workloads ------------------------------------------------------------------------------

def test_cached_weights_equal_trained_ones_and_skip_training(mlp, cache) -> None:  # type: ignore[no-untyped-def]
    again = workloads.load("mlp", "tiny", 0, cache)
    assert mlp.train_seconds is not None and again.train_seconds is None
    for a, b in zip(mlp.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [p.name for p in cache.iterdir() if p.suffix == ".tmp"] == []


def test_cache_key_covers_seed_and_size() -> None:
    keys = {workloads.cache_key("mlp", size, seed) for size in ("tiny", "small") for seed in (0, 1)}
    assert len(keys) == 4


def test_trained_digits_mlp_beats_chance_by_far(mlp) -> None:  # type: ignore[no-untyped-def]
    split = mlp.split
    accuracy = runtimes.correct_predictions(runtimes.torch_module(mlp.model, "m"), split.x_eval, split.y_eval)
    assert float(accuracy.float().mean()) > 0.85


def test_calibration_comes_from_the_train_split_only(mlp) -> None:  # type: ignore[no-untyped-def]
    train = {tuple(row.tolist()) for row in mlp.split.x_train}
    assert all(tuple(row.tolist()) in train for row in mlp.calibration)
    assert len(mlp.calibration) == workloads.CALIBRATION_SAMPLES


def test_batch_repeats_the_eval_set_beyond_its_length(mlp) -> None:  # type: ignore[no-untyped-def]
    n = len(mlp.split.x_eval)
    big = mlp.batch(n + 3)
    assert len(big) == n + 3 and torch.equal(big[n], mlp.split.x_eval[0])


def test_breast_cancer_is_pinned_and_standardised_on_train_statistics() -> None:
    split = data.breast_cancer()
    assert split.x_train.shape == (426, 30) and split.x_eval.shape == (143, 30)
    assert split.x_train.mean(dim=0).abs().max() < 1e-5
    assert set(split.y_eval.tolist()) == {0, 1}


def test_digit_rows_are_8_steps_of_8_pixels() -> None:
    split = data.digit_rows()
    assert split.x_eval.shape == (450, 8, 8)


def test_unknown_workload_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown workload 'resnet'"):
        workloads.untrained("resnet", "tiny", 0)


def test_lstm_workload_classifies_sequences() -> None:
    model, split, _ = workloads.untrained("lstm", "tiny", 0)
    assert model(split.x_eval[:5]).shape == (5, 10)


# -- torch.ao / torchao ---------------------------------------------------------------------

def test_fusion_finds_linear_relu_and_conv_bn_relu_runs() -> None:
    assert quantize.fusion_groups(training_models.MLP(16)) == [["layers.0", "layers.1"], ["layers.2", "layers.3"]]
    block = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    assert quantize.fusion_groups(block) == [["0", "1", "2"], ["3", "4"]]


def test_static_ptq_fuses_calibrates_and_quantises(mlp) -> None:  # type: ignore[no-untyped-def]
    prepared, groups = quantize.prepare_static(mlp.model)
    assert quantize.calibrate(prepared, mlp.calibration) == 4 and len(groups) == 2
    converted = quantize.convert_static(prepared)
    assert type(converted.model.layers[0]).__module__.startswith("torch.ao.nn.intrinsic.quantized")
    assert converted(mlp.batch(3)).dtype == torch.float32
    assert isinstance(mlp.model.layers[0], nn.Linear)  # the fp32 model is untouched


def test_static_ptq_of_token_inputs_fails_with_torchs_own_message() -> None:
    model, split, _ = workloads.untrained("transformer", "tiny", 0)
    with pytest.raises(runtimes.ConversionError, match="torch.ao static quantisation failed: .+Long"):
        quantize.static_ao(model.eval(), split.x_train[:64])


def test_static_ptq_swaps_lstm_for_its_quantised_form() -> None:
    model, split, _ = workloads.untrained("lstm", "tiny", 0)
    quantized = quantize.static_ao(model.eval(), split.x_train[:64])
    assert type(quantized.model.lstm).__module__.startswith("torch.ao.nn.quantized")


def test_dynamic_quantisation_covers_lstm_and_linear() -> None:
    model, split, _ = workloads.untrained("lstm", "tiny", 0)
    quantized = quantize.dynamic_ao(model.eval(), split.x_eval[:2])
    assert "quantized" in type(quantized.lstm).__module__ and "quantized" in type(quantized.head).__module__


def test_dynamic_quantisation_that_breaks_the_model_at_run_time_is_a_conversion_error() -> None:
    model, split, _ = workloads.untrained("transformer", "tiny", 0)
    with pytest.raises(runtimes.ConversionError, match="torch.ao quantize_dynamic failed: AttributeError"):
        quantize.dynamic_ao(model.eval(), split.x_eval[:2])


def test_quantized_engine_is_one_torch_supports() -> None:
    assert quantize.quantized_engine() in torch.backends.quantized.supported_engines


def test_unknown_torchao_config_is_refused_before_converting() -> None:
    with pytest.raises(ValueError, match="unknown torchao config 'int3'"):
        quantize.torchao_quantize(training_models.MLP(8), "int3")


# -- ONNX -----------------------------------------------------------------------------------

def test_legacy_export_records_the_opset_asked_for(mlp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    exported = onnx_export.export(mlp.model, mlp.batch(8), tmp_path / "m.onnx", "legacy", opset=17)
    assert exported.opset == 17 and onnx_export.checker_error(exported.path) is None


def test_failed_export_keeps_the_exporters_message(tmp_path) -> None:
    model = training_models.build("transformer", "tiny").eval()
    with pytest.raises(runtimes.ConversionError) as caught:
        onnx_export.export(model, torch.zeros(2, 16, dtype=torch.long), tmp_path / "t.onnx", "legacy")
    assert "torch.onnx.export (legacy) failed" in str(caught.value)
    assert "_transformer_encoder_layer_fwd" in str(caught.value)


def test_unknown_exporter_is_refused(mlp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="unknown exporter 'tf'"):
        onnx_export.export(mlp.model, mlp.batch(2), tmp_path / "m.onnx", "tf")


def test_file_bytes_counts_external_data(mlp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import onnx

    exported = onnx_export.export(mlp.model, mlp.batch(8), tmp_path / "m.onnx", "legacy")
    model = onnx.load(str(exported.path))
    outside = tmp_path / "outside.onnx"
    onnx.save(model, str(outside), save_as_external_data=True, location="outside.data", size_threshold=0)
    assert outside.stat().st_size < exported.size_bytes / 2
    assert onnx_export.file_bytes(outside) == outside.stat().st_size + (tmp_path / "outside.data").stat().st_size


def test_session_records_threads_level_and_providers(mlp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    exported = onnx_export.export(mlp.model, mlp.batch(8), tmp_path / "m.onnx", "legacy")
    runtime = onnx_runtime.ort_runtime(exported.path, "ort", "fp32", threads=1, optimization="basic")
    info = runtime.provenance
    assert info["provider_used"] == "CPUExecutionProvider" and info["ort_intra_op_threads"] == 1
    assert info["graph_optimization_level"] == "basic" and info["opset"] == exported.opset
    assert runtime.predict(mlp.batch(5)).shape == (5, 10)


@pytest.mark.parametrize("bad", [{"provider": "rocm"}, {"optimization": "max"}])
def test_session_refuses_unknown_provider_or_level(mlp, tmp_path, bad) -> None:  # type: ignore[no-untyped-def]
    exported = onnx_export.export(mlp.model, mlp.batch(8), tmp_path / "m.onnx", "legacy")
    with pytest.raises(ValueError, match="unknown"):
        onnx_runtime.session(exported.path, **bad)


def test_calibration_reader_covers_the_split_once_per_pass(mlp) -> None:  # type: ignore[no-untyped-def]
    reader = onnx_runtime.calibration_reader(mlp.calibration[:150], batch_size=64)
    seen = []
    while (batch := reader.get_next()) is not None:
        seen.append(batch[onnx_export.INPUT_NAME].shape[0])
    assert seen == [64, 64, 22]
    reader.rewind()
    assert reader.get_next() is not None


@pytest.mark.parametrize("fmt", onnx_runtime.STATIC_FORMATS)
def test_static_ort_quantisation_writes_int8_nodes(mlp, tmp_path, fmt) -> None:  # type: ignore[no-untyped-def]
    import onnx

    exported = onnx_export.export(mlp.model, mlp.batch(8), tmp_path / "m.onnx", "legacy")
    ready = onnx_runtime.preprocess(exported.path, tmp_path / "p.onnx")
    quantized = onnx_runtime.quantize_static(ready, tmp_path / "q.onnx", mlp.calibration, fmt)
    ops = {node.op_type for node in onnx.load(str(quantized)).graph.node}
    expected = "QuantizeLinear" if fmt == "qdq" else "QLinearMatMul"
    assert expected in ops or "QGemm" in ops, ops


# -- TorchScript, compile -------------------------------------------------------------------

def test_tracing_a_range_guard_warns_and_diverges(mlp) -> None:  # type: ignore[no-untyped-def]
    guarded = models.RangeGuard(mlp.model).eval()
    inside = mlp.batch(8) / mlp.batch(8).abs().max()
    traced = torchscript.convert(guarded, inside, "trace")
    assert any("Python boolean" in note for note in traced.tracer_warnings)
    with pytest.warns(torchscript.TraceDivergenceWarning, match="use torch.jit.script"):
        result = torchscript.compare_with_eager(guarded, traced, [inside, inside * 4])
    assert result.errors[0] < 1e-6 < result.errors[1]


def test_scripted_range_guard_agrees_without_warning(mlp) -> None:  # type: ignore[no-untyped-def]
    guarded = models.RangeGuard(mlp.model).eval()
    inside = mlp.batch(8) / mlp.batch(8).abs().max()
    with warnings.catch_warnings():
        warnings.simplefilter("error", torchscript.TraceDivergenceWarning)
        result = torchscript.compare_with_eager(guarded, torchscript.convert(guarded, inside, "script"),
                                                [inside, inside * 4])
    assert not result.diverged


def test_unknown_modes_are_refused(mlp) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="unknown TorchScript mode"):
        torchscript.convert(mlp.model, mlp.batch(2), "freeze")
    with pytest.raises(ValueError, match="unknown compile mode"):
        compile.compile_module(mlp.model, "fastest")


def test_conversion_error_names_the_converter_and_the_cause() -> None:
    error = runtimes.ConversionError("tool x", KeyError("missing op"))
    assert str(error) == "tool x failed: KeyError: 'missing op'" and error.converter == "tool x"


def test_golden_outputs_are_fp64_and_leave_the_model_fp32(mlp) -> None:  # type: ignore[no-untyped-def]
    golden = runtimes.golden_outputs(mlp.model, mlp.batch(4))
    assert golden.dtype == torch.float64 and next(mlp.model.parameters()).dtype == torch.float32


@pytest.mark.slow
def test_torch_compile_matches_eager_at_new_batch_sizes(mlp) -> None:  # type: ignore[no-untyped-def]
    compiled = compile.compile_module(mlp.model)
    with torch.no_grad():
        for n in (8, 1, 37):
            assert torch.allclose(compiled(mlp.batch(n)), mlp.model(mlp.batch(n)), rtol=1e-5, atol=1e-6)


# -- TensorRT (only where it exists) ---------------------------------------------------------

@pytest.mark.gpu
@requires_cuda
def test_tensorrt_fp16_engine_matches_golden_and_int8_keeps_accuracy(mlp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("tensorrt")
    from reference.optimize import conformance, tensorrt_engine

    exported = onnx_export.export(mlp.model, mlp.batch(8), tmp_path / "m.onnx", "dynamo")
    split = mlp.split
    fp32 = runtimes.correct_predictions(runtimes.torch_module(mlp.model, "m"), split.x_eval, split.y_eval)
    for precision in tensorrt_engine.PRECISIONS:
        runner = tensorrt_engine.EngineRunner(tensorrt_engine.build_engine(exported.path, precision, mlp.calibration))
        runtime = runtimes.Runtime("trt", precision, runner, lambda x: x.cuda(), runtimes.to_cpu_float, 0)
        assert conformance.matches_golden(runtime, mlp.model, [mlp.batch(1), mlp.batch(37)]).passed
        assert conformance.keeps_fp32_accuracy(fp32, runtimes.correct_predictions(runtime, split.x_eval,
                                                                                  split.y_eval)).passed
