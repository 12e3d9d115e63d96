"""Real Triton (tritonserver 2.51 from the nvidia-pytriton wheel, in its own virtualenv
built on first use) started and stopped by the suite, driven through tritonclient over
HTTP and gRPC: the same conformance checks, and the classic model configuration."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

pytest.importorskip("torch")
pytest.importorskip("tritonclient")
pytest.importorskip("httpx")

from reference.serving import adapters, conformance, deployments, models, triton  # noqa: E402
from reference.serving.process import ServerFailed  # noqa: E402
from suite import loadgen  # noqa: E402

pytestmark = [pytest.mark.serving, pytest.mark.slow]
ROWS = models.digits_rows(48)


@pytest.fixture(scope="module")
def model() -> models.DigitsMLP:
    return models.build("tiny", seed=9)


@pytest.fixture(scope="module")
def triton_server(model: models.DigitsMLP,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[deployments.Deployment]:
    try:
        triton.ensure()
    except ServerFailed as exc:  # no package index here: the scenario records `skipped` the same way
        pytest.skip(f"Triton virtualenv cannot be built: {exc}")
    root = tmp_path_factory.mktemp("triton")
    version = models.save_version(model, root / "models" / "1", "torchscript")
    deployment = deployments.start_triton(version, root / "run",
                                          deployments.ServeOptions(max_batch_size=8, max_queue_delay_ms=5.0))
    yield deployment
    deployment.stop()
    assert not deployment.process.running


CLIENTS = {"json": None, "http": adapters.TritonHttp, "grpc": adapters.TritonGrpc}


@pytest.fixture(params=list(CLIENTS))
def served(request: pytest.FixtureRequest, triton_server: deployments.Deployment) -> deployments.Deployment:
    """The one server, driven through KServe JSON, tritonclient HTTP or tritonclient gRPC."""
    client = CLIENTS[request.param]
    if client is None:
        return triton_server
    address = triton_server.provenance[f"{request.param}_address"]

    def adapter() -> loadgen.Adapter:
        return client(address, triton.MODEL_NAME)

    return dataclasses.replace(triton_server, predict=adapter, batch=adapter)


def test_outputs_match_the_eager_model(served: deployments.Deployment, model: models.DigitsMLP) -> None:
    check = conformance.outputs_match_eager(served.predict, ROWS, models.golden(model, ROWS), models.eager(model, ROWS))
    assert check.passed, check


def test_dynamic_batching_returns_each_caller_its_own_rows(served: deployments.Deployment,
                                                          model: models.DigitsMLP) -> None:
    before = deployments.counter_total(served.scrape(), "nv_inference_exec_count", model=triton.MODEL_NAME)
    check = conformance.no_crosstalk(served.predict, ROWS, models.golden(model, ROWS), concurrency=24)
    executions = deployments.counter_total(served.scrape(), "nv_inference_exec_count", model=triton.MODEL_NAME)
    assert check.passed, check
    assert executions - before < len(ROWS)  # Triton's dynamic batcher really merged requests


def test_a_batch_request_equals_individual_requests(served: deployments.Deployment) -> None:
    assert served.batch is not None
    check = conformance.batch_equals_individual(served.batch, served.predict, ROWS[:8])
    assert check.passed, check


def test_prometheus_counter_equals_client_count(served: deployments.Deployment) -> None:
    check = conformance.metrics_match_client(served.predict, ROWS, served.requests_counted, requests=100)
    assert check.passed, check


def test_bad_input_is_refused_and_triton_keeps_serving(served: deployments.Deployment) -> None:
    """Triton refuses every bad request and keeps serving; the check reports which ones
    it answers with 500 rather than 4xx (2.51 does so for unparsable JSON bodies). Inputs
    whose outputs are not finite get the model's INVALID_ARG error, never a 200."""
    check = conformance.bad_input_rejected(served.bad_cases, conformance.http_sender(served.auth),
                                           conformance.adapter_probe(served.predict, ROWS[0]))
    assert "stopped answering" not in check.detail
    answers = {name: int(status) for name, status in (part.rsplit(": ", 1) for part in check.detail.split("; "))}
    assert len(answers) == len(served.bad_cases) and all(status >= 400 for status in answers.values())
    assert check.passed == all(status < 500 for status in answers.values())
    print(f"Triton bad-input statuses: {check.detail}")
    assert deployments.EXTREME_CASE in answers  # sent: a row that overflows this model here was found


def test_model_config_is_the_classic_one() -> None:
    common = dict(max_batch_size=16, preferred_batch_sizes=(4, 8, 32), max_queue_delay_us=2000, threads=1,
                  model_file="model.ts", site_packages="/x", in_features=64, classes=10)
    batching = triton.model_config(dynamic_batching=True, **common)
    assert "max_batch_size: 16" in batching and 'backend: "python"' in batching
    assert "dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 2000 }" in batching
    assert "model_warmup" in batching and "KIND_CPU" in batching
    assert "dynamic_batching" not in triton.model_config(dynamic_batching=False, **common)
