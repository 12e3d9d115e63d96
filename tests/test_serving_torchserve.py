"""Real TorchServe (Java frontend, Python worker) started and stopped by the suite: the
same checks as the reference server, plus its deployment rules (APIs on loopback only,
token authorisation on, batching configured)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("ts")
pytest.importorskip("model_archiver")
pytest.importorskip("yaml")
pytest.importorskip("httpx")

from reference.serving import conformance, deployments, models  # noqa: E402
from tests.conftest import requires_java  # noqa: E402

pytestmark = [pytest.mark.serving, pytest.mark.slow, requires_java]
ROWS = models.digits_rows(48)


@pytest.fixture(scope="module")
def model() -> models.DigitsMLP:
    return models.build("tiny", seed=0)


@pytest.fixture(scope="module")
def torchserve(model: models.DigitsMLP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[deployments.Deployment]:
    root = tmp_path_factory.mktemp("torchserve")
    version = models.save_version(model, root / "models" / "1", "torchscript")
    deployment = deployments.start_torchserve(version, root / "run",
                                              deployments.ServeOptions(max_batch_size=8, max_queue_delay_ms=5.0))
    yield deployment
    deployment.stop()
    assert not deployment.process.running


def test_outputs_match_the_eager_model(torchserve: deployments.Deployment, model: models.DigitsMLP) -> None:
    check = conformance.outputs_match_eager(torchserve.predict, ROWS, models.golden(model, ROWS),
                                            models.eager(model, ROWS))
    assert check.passed, check


def test_batched_callers_get_their_own_results(torchserve: deployments.Deployment, model: models.DigitsMLP) -> None:
    check = conformance.no_crosstalk(torchserve.predict, ROWS, models.golden(model, ROWS), concurrency=24)
    assert check.passed, check


def test_bad_input_gets_4xx_and_torchserve_keeps_serving(torchserve: deployments.Deployment) -> None:
    check = conformance.bad_input_rejected(torchserve.bad_cases, conformance.http_sender(torchserve.auth),
                                           conformance.adapter_probe(torchserve.predict, ROWS[0]))
    print(f"TorchServe bad-input statuses: {check.detail}")
    assert check.passed, check.detail
    assert "oversized payload: 413" in check.detail
    # the handler checks its outputs (the case is sent with a row found to overflow this model here)
    assert f"{deployments.EXTREME_CASE}: 400" in check.detail
    assert "missing token: 400" in check.detail  # TorchServe's answer (users expect 401/403): reported


def test_prometheus_counter_equals_client_count(torchserve: deployments.Deployment) -> None:
    check = conformance.metrics_match_client(torchserve.predict, ROWS, torchserve.requests_counted, requests=100)
    assert check.passed, check


def test_apis_bind_loopback_with_token_auth_and_batching(torchserve: deployments.Deployment) -> None:
    import json

    import httpx

    properties = (torchserve.process.cwd / "config.properties").read_text().splitlines()
    config = dict(line.split("=", 1) for line in properties)
    for api in ("inference_address", "management_address", "metrics_address"):
        assert config[api].startswith("http://127.0.0.1:")
    assert config["grpc_inference_address"] == config["grpc_management_address"] == "127.0.0.1"
    model_config = json.loads(config["models"])["digits"]["1.0"]
    assert (model_config["batchSize"], model_config["maxBatchDelay"]) == (8, 5)
    url = config["inference_address"] + "/predictions/digits"
    assert httpx.post(url, json={"inputs": ROWS[0].tolist()}).status_code in (400, 401)  # no token
    assert httpx.post(url, json={"inputs": ROWS[0].tolist()}, headers=torchserve.auth).status_code == 200


def test_a_broken_handler_fails_fast_with_torchserve_s_own_error(tmp_path: Path, model: models.DigitsMLP) -> None:
    from reference.serving import torchserve
    from reference.serving.process import ServerFailed

    version = models.save_version(model, tmp_path / "models" / "1", "torchscript")
    (version / "model.ts").write_bytes(b"not a TorchScript archive")
    with pytest.raises(ServerFailed, match="Failed to load model digits, exception PytorchStreamReader"):
        torchserve.start_torchserve(version, tmp_path / "run", timeout_s=90)


def test_the_handler_freezes_what_it_loaded_out_of_the_collector(tmp_path: Path) -> None:
    """As the reference server once warm: TorchServe's Python worker holds torch too, and
    a full collection of it took ~100 ms under load (the comparison must be fair)."""
    import gc
    import json
    from types import SimpleNamespace

    import torch

    from reference.serving.torchserve_handler import DigitsHandler

    torch.jit.script(torch.nn.Linear(4, 2)).save(str(tmp_path / "model.pt"))
    (tmp_path / "setup_config.json").write_text(json.dumps({"threads": 1, "in_features": 4,
                                                            "model_file": "model.pt"}))
    gc.unfreeze()
    DigitsHandler().initialize(SimpleNamespace(system_properties={"model_dir": str(tmp_path)}))
    assert gc.get_freeze_count() > 10_000
