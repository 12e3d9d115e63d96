"""The optimisation scenarios through the harness's own worker: registration, requirements
(TensorRT skipped with its reason here, not-applicable combinations), a full record with the
table's metrics, and a failing export recorded as `error` with the exporter's message."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from suite import registry
from suite.requirements import first_unmet
from tests.conftest import REPO_ROOT


def optimize_scenarios() -> dict[str, type[registry.Scenario]]:
    registry.discover()
    return {k: v for k, v in registry.scenarios().items() if v.__module__ == "reference.optimize.scenarios"}


def test_every_technique_is_registered_with_quick_and_the_batch_table_axes() -> None:
    found = optimize_scenarios()
    assert len(found) >= 2, found  # the id/folder agreement is tests/test_layout_contract.py's
    for cls in found.values():
        assert cls.param_grid("quick"), cls.id


def test_gpu_profile_adds_cuda_eager_amp_compile_ort_cuda_and_tensorrt() -> None:
    found = optimize_scenarios()
    gpu = {sid: cls.param_grid("gpu") or [] for sid, cls in found.items()}
    assert {p["precision"] for p in gpu["optimize.eager"]} >= {"fp16", "bf16"}
    on_cuda = gpu["optimize.eager"] + gpu["optimize.compile"] + gpu["optimize.tensorrt"]
    assert all(p["device"] == "cuda" for p in on_cuda)
    assert {p["provider"] for p in gpu["optimize.onnx.ort"]} == {"cuda", "tensorrt"}


def test_scenarios_module_imports_nothing_heavy() -> None:
    code = ("import sys, reference.optimize.scenarios; "
            "heavy = {'torch', 'onnx', 'onnxruntime', 'torchao', 'tensorrt'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def unmet(scenario_id: str, **params) -> str | None:  # type: ignore[no-untyped-def]
    cls = optimize_scenarios()[scenario_id]
    return first_unmet(cls().requirements({**cls.param_grid("full")[0], **params}))


def test_tensorrt_is_skipped_with_its_reason_on_a_host_without_it() -> None:
    pytest.importorskip("torch")
    from suite.requirements import cuda_device_count

    reason = unmet("optimize.tensorrt", model="mlp", precision="fp16")
    if reason is None:
        pytest.skip("TensorRT and CUDA are present here")
    assert "tensorrt" in reason or "CUDA" in reason
    if cuda_device_count() == 0 and __import__("importlib").util.find_spec("tensorrt") is None:
        assert reason == "package tensorrt is not installed"


def test_not_applicable_combinations_say_why() -> None:
    assert "QuantStub" in unmet("optimize.quant.torch_ao", model="transformer", method="static")
    assert unmet("optimize.eager", device="cpu", precision="tf32").startswith("not applicable: TF32")
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    assert unmet("optimize.quant.torch_ao", model="lstm", method="static") is None  # the quantizable LSTM


def test_ort_cuda_provider_needs_cuda_and_the_provider() -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this host has the CUDA EP")
    reason = unmet("optimize.onnx.ort", provider="cuda")
    assert reason is not None and ("CUDA" in reason or "CUDAExecutionProvider" in reason)


# -- through the worker, with a tiny budget ---------------------------------------------------

TINY_BUDGET = {"warmup_calls": 1, "warmup_s": 0.0, "min_samples": 3, "max_samples": 5, "max_time_s": 0.01,
               "threads": 1, "seed": 0}


@pytest.fixture(scope="module")
def run(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One job through `python -m suite.worker`, in its own process as the runner does it
    (torch's thread settings can only be pinned once per process)."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("onnxruntime")
    cache = tmp_path_factory.mktemp("cache")
    jobs = tmp_path_factory.mktemp("jobs")

    def run_job(scenario_id: str, **params):  # type: ignore[no-untyped-def]
        job, result = jobs / f"{len(list(jobs.iterdir()))}.json", jobs / "result.json"
        job.write_text(json.dumps({"scenario": scenario_id, "params": {"size": "tiny", "device": "cpu", **params},
                                   "profile": "quick", "budget": TINY_BUDGET,
                                   "module": "reference.optimize.scenarios", "artifacts": str(jobs / "artifacts")}))
        env = {**os.environ, "MLSUITE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "suite.worker", str(job), str(result)], check=True, cwd=REPO_ROOT,
                       env=env, capture_output=True, timeout=300)
        return json.loads(result.read_text())
    return run_job


def names(result) -> set[str]:  # type: ignore[no-untyped-def]
    return {m["name"] for m in result["metrics"]}


def test_a_quantisation_record_holds_the_whole_table_row(run) -> None:  # type: ignore[no-untyped-def]
    result = run("optimize.quant.torch_ao", model="mlp", method="static")
    assert result["status"] == "ok", result["reason"]
    table = {f"{kind}.b{b}" for kind in ("latency", "throughput", "first_inference") for b in (1, 8, 64)}
    table |= {"calibrate", "quantize", "model_size", "size_vs_fp32", "accuracy", "accuracy_delta"}
    assert table <= names(result)
    cold = {m["name"] for m in result["metrics"] if m["kind"] == "cold"}
    assert {"calibrate", "quantize", "first_inference.b1"} <= cold and "latency.b1" not in cold
    provenance = result["provenance"]
    assert provenance["precision"] == "int8" and provenance["quantized_engine"] in ("x86", "fbgemm", "qnnpack")
    assert provenance["torch_threads"]["intra_op"] == 1
    assert {c["name"] for c in result["checks"]} >= {"runtime.runs_at_unseen_batch_sizes",
                                                     "accuracy.mlperf_99pct_of_fp32"}


def test_an_onnx_record_names_exporter_opset_and_provider(run) -> None:  # type: ignore[no-untyped-def]
    result = run("optimize.onnx.ort", model="mlp", exporter="legacy", provider="cpu", optimization="all")
    assert result["status"] == "ok", result["reason"]
    provenance = result["provenance"]
    assert provenance["exporter"] == "legacy" and provenance["opset"] >= 17
    assert provenance["provider_used"] == "CPUExecutionProvider" and provenance["ort_intra_op_threads"] == 1
    assert {"export", "session_load"} <= names(result)
    assert all(c["passed"] for c in result["checks"]), result["checks"]


def test_a_failing_export_is_an_error_record_with_the_exporters_message(run) -> None:  # type: ignore[no-untyped-def]
    result = run("optimize.onnx.ort", model="transformer", exporter="legacy", provider="cpu", optimization="all")
    assert result["status"] == "error"
    assert result["reason"].startswith("setup: ConversionError: torch.onnx.export (legacy) failed:")
    assert "_transformer_encoder_layer_fwd" in result["reason"]


def test_torchscript_trace_record_flags_the_control_flow_pitfall(run) -> None:  # type: ignore[no-untyped-def]
    result = run("optimize.torchscript", model="mlp", mode="trace")
    assert result["status"] == "ok", result["reason"]
    flagged = next(c for c in result["checks"] if c["name"] == "torchscript.trace_pitfall_flagged")
    assert flagged["passed"] and "divergence found" in flagged["detail"]
