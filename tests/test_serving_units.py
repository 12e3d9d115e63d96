"""The reference server's parts without a server: model formats, PNG decoding, the LRU
model cache (a hypothesis state machine against a plain list, and a planted FIFO bug it
must catch) and the dynamic batcher (own results, batch bound, shedding, drain)."""

from __future__ import annotations

import asyncio
import io
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("PIL")

from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test  # noqa: E402

from reference.serving import deployments, images, models  # noqa: E402
from reference.serving.batching import Draining, DynamicBatcher, QueueFull  # noqa: E402
from reference.serving.cache import LRUCache  # noqa: E402
from suite import checks  # noqa: E402

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def tiny_model() -> models.DigitsMLP:
    return models.build("tiny", seed=3)


@pytest.mark.parametrize("fmt", models.FORMATS)
def test_every_format_loads_back_to_the_eager_model(tmp_path: Path, tiny_model: models.DigitsMLP, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    predictor = models.load_version(models.save_version(tiny_model, tmp_path / "1", fmt))
    rows = models.digits_rows(32)
    check = checks.close_to_golden("format", predictor(rows), models.golden(tiny_model, rows), "fp32")
    assert check.passed, check
    assert predictor.fmt == fmt and predictor.in_features == models.IN_FEATURES


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled code ran",))


def test_state_dict_loading_never_unpickles_code(tmp_path: Path, tiny_model: models.DigitsMLP) -> None:
    version = models.save_version(tiny_model, tmp_path / "1", "state_dict")
    (version / models.FILE_NAMES["state_dict"]).write_bytes(pickle.dumps({"layers.0.weight": Payload()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        models.load_version(version)


def test_unknown_formats_and_sizes_are_refused(tmp_path: Path, tiny_model: models.DigitsMLP) -> None:
    with pytest.raises(ValueError, match="unknown model format"):
        models.save_version(tiny_model, tmp_path / "1", "pickle")
    with pytest.raises(ValueError, match="unknown model size"):
        models.build("huge")


def test_the_extreme_row_is_one_whose_outputs_overflow_and_none_where_none_do(tmp_path: Path,
                                                                            tiny_model: models.DigitsMLP) -> None:
    """The "extreme inputs" bad case is sent only with a row the deployed model cannot answer
    in numbers: a model whose outputs stay finite (its first layer ignores the inputs) has
    none, and a 200 from it is right."""
    import torch

    predictor = models.load_version(models.save_version(tiny_model, tmp_path / "1", "torchscript"))
    row = deployments.extreme_row(tmp_path / "1", threads=1)
    assert row is not None and set(np.abs(row)) == {np.float32(deployments.EXTREME)}
    assert not np.isfinite(predictor(row[None, :])).all()

    blind = models.build("tiny", seed=3)
    with torch.no_grad():
        blind.layers[0].weight.zero_()
    models.save_version(blind, tmp_path / "2", "torchscript")
    assert deployments.extreme_row(tmp_path / "2", threads=1) is None
    cases = deployments.common_bad_cases("http://127.0.0.1:1/predict", models.IN_FEATURES, None)
    assert deployments.EXTREME_CASE not in {case.name for case in cases}


THREAD_CALL = """
import os, sys, threading
from pathlib import Path
import numpy as np
from reference.serving import models
version = models.save_version(models.build("large", seed=0), Path(sys.argv[1]), "torchscript")
predictor = models.load_version(version, threads=1)
rows = np.zeros((16, predictor.in_features), np.float32)
def call():
    before = len(os.listdir("/proc/self/task"))
    predictor(rows)
    print(len(os.listdir("/proc/self/task")) - before)
worker = threading.Thread(target=call)
worker.start()
worker.join()
"""


@pytest.mark.parametrize("fmt", ["torchscript", "state_dict"])
def test_a_predictor_called_from_another_thread_keeps_its_thread_count(tmp_path: Path, fmt: str) -> None:
    """A 1-thread predictor called from a server's batcher thread, in a process whose
    environment says MKL_NUM_THREADS=2, starts no thread pool of its own."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MKL_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}
    code = THREAD_CALL.replace('"torchscript"', repr(fmt))
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "1")], env=env, capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0"]  # threads started by the call


def test_png_round_trip_and_refusals() -> None:
    from PIL import Image

    row = models.digits_rows(1)[0]
    decoded = images.png_to_row(images.row_to_png(row))
    assert np.abs(decoded - row).max() <= images.DIGITS_MAX / 255  # one grey level
    big = Image.fromarray(np.full((32, 32), 255, np.uint8), mode="L")
    png, jpeg = io.BytesIO(), io.BytesIO()
    big.save(png, format="PNG")
    assert images.png_to_row(png.getvalue()).shape == (64,)  # downscaled to 8x8
    big.convert("RGB").save(jpeg, format="JPEG")
    with pytest.raises(images.NotAnImage, match="expected a PNG"):
        images.png_to_row(jpeg.getvalue())
    with pytest.raises(images.NotAnImage, match="not a decodable PNG"):
        images.png_to_row(b"\x89PNG\r\n\x1a\n truncated")


def test_decompression_bombs_are_refused_before_their_pixels_are_decoded() -> None:
    import time

    for name, data in images.bombs().items():
        start = time.perf_counter()
        with pytest.raises(images.TooManyPixels):
            images.png_to_row(data)
        assert time.perf_counter() - start < 0.5, name  # refused from the header, not after decoding
    assert len(images.bombs()["PNG declaring 20000x20000 pixels"]) < 100


def test_pixel_limit_is_the_line_between_decoded_and_refused() -> None:
    from PIL import Image

    def png(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("L", (width, height)).save(buffer, format="PNG")
        return buffer.getvalue()

    assert images.png_to_row(png(1024, 1024)).shape == (64,)
    with pytest.raises(images.TooManyPixels, match="over the limit"):
        images.png_to_row(png(1025, 1024))


# --------------------------------------------------------------------------- LRU cache


class FifoCache(LRUCache[str, str]):
    """Planted bug: a hit does not refresh the entry, so eviction is first-in-first-out."""

    def get(self, key: str) -> str:
        if key in self._entries:
            self.hits += 1
            return self._entries[key]
        return super().get(key)


def lru_machine(cache_class: type[LRUCache[str, str]], capacity: int = 3) -> type[RuleBasedStateMachine]:
    class CacheAgainstAList(RuleBasedStateMachine):
        """The cache against the simplest LRU there is: a list, most recent last."""

        def __init__(self) -> None:
            super().__init__()
            self.loads: list[str] = []
            self.evicted: list[str] = []
            self.cache = cache_class(capacity, self.load, on_evict=lambda k, v: self.evicted.append(k))
            self.model: list[str] = []

        def load(self, key: str) -> str:
            self.loads.append(key)
            return f"model-{key}"

        @rule(key=st.sampled_from("abcdef"))
        def get(self, key: str) -> None:
            expect_load = key not in self.model
            expect_evict = self.model[0] if expect_load and len(self.model) == capacity else None
            loads, evicted = len(self.loads), len(self.evicted)
            assert self.cache.get(key) == f"model-{key}"
            assert (len(self.loads) == loads + 1) == expect_load
            assert self.evicted[evicted:] == ([expect_evict] if expect_evict else [])
            if key in self.model:
                self.model.remove(key)
            self.model = [*self.model, key][-capacity:]

        @invariant()
        def same_order(self) -> None:
            assert self.cache.keys() == self.model
            assert len(self.cache) <= capacity

    return CacheAgainstAList


def test_lru_cache_matches_the_reference_model() -> None:
    run_state_machine_as_test(lru_machine(LRUCache), settings=settings(max_examples=150, derandomize=True,
                                                                         deadline=None))


def test_state_machine_catches_fifo_eviction() -> None:
    with pytest.raises(AssertionError):
        run_state_machine_as_test(lru_machine(FifoCache), settings=settings(max_examples=150, derandomize=True,
                                                                              deadline=None))


def test_cache_refuses_zero_capacity_and_keeps_state_on_failed_load() -> None:
    with pytest.raises(ValueError):
        LRUCache(0, str)

    def flaky(key: str) -> str:
        if key == "bad":
            raise FileNotFoundError(key)
        return key

    cache = LRUCache(2, flaky)
    cache.get("a")
    with pytest.raises(FileNotFoundError):
        cache.get("bad")
    assert cache.keys() == ["a"]


# --------------------------------------------------------------------------- batcher


def doubling(rows: np.ndarray) -> np.ndarray:
    return rows * 2.0


class ReversingBatcher(DynamicBatcher):
    """Planted bug: hands a batch's outputs back in reverse order."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.infer = lambda rows: doubling(rows)[::-1].copy()


async def many_callers(batcher: DynamicBatcher, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    batcher.start()
    rows = [np.full((1 + i % 3, 4), float(i), np.float32) for i in range(count)]
    outputs = await asyncio.gather(*(batcher.submit(r) for r in rows))
    await batcher.close()
    return list(zip(rows, outputs, strict=True))


@pytest.mark.parametrize("batcher_class", [DynamicBatcher, ReversingBatcher])
def test_each_caller_gets_its_own_rows(batcher_class: type[DynamicBatcher]) -> None:
    batcher = batcher_class(doubling, max_batch_size=8, max_queue_delay_s=0.01, max_pending=100)
    pairs = asyncio.run(many_callers(batcher, 40))
    own = all(np.array_equal(out, rows * 2) for rows, out in pairs)
    assert batcher.stats.largest > 1  # batches really formed
    assert batcher.stats.largest <= 8  # and never above the bound (requests are not split)
    assert batcher.stats.rows == sum(len(r) for r, _ in pairs)
    assert own == (batcher_class is DynamicBatcher)


def test_full_queue_sheds_and_close_drains() -> None:
    async def scenario() -> tuple[list[object], object, int]:
        batcher = DynamicBatcher(doubling, max_batch_size=64, max_queue_delay_s=0.2, max_pending=3)
        batcher.start()
        row = np.ones((1, 4), np.float32)
        outcomes = await asyncio.gather(*(batcher.submit(row) for _ in range(5)), return_exceptions=True)
        late = asyncio.ensure_future(batcher.submit(row))  # admitted, then drained by close()
        await asyncio.sleep(0)
        await batcher.close()
        try:
            await batcher.submit(row)
            after: object = "accepted"
        except Draining as exc:
            after = exc
        return [*outcomes, await late], after, batcher.pending

    outcomes, after, pending = asyncio.run(scenario())
    shed = [o for o in outcomes if isinstance(o, QueueFull)]
    served = [o for o in outcomes if isinstance(o, np.ndarray)]
    assert len(shed) == 2 and len(served) == 4
    assert "queue full" in str(shed[0])
    assert isinstance(after, Draining)
    assert pending == 0


def test_a_request_that_waited_out_the_delay_behind_a_batch_starts_the_next_at_once() -> None:
    """The queue delay counts from a request's arrival (as Triton's does): one that arrived
    while a batch ran, and has waited longer than the delay by the time it ends, is not held
    for company again. Held from when it was dequeued, every batch under open-loop load
    would leave the model idle for the whole delay."""
    delay_s, model_s = 1.0, 1.1  # long enough that a busy CI host cannot blur a whole delay
    started = threading.Event()
    runs: list[tuple[float, float]] = []

    def slow(rows: np.ndarray) -> np.ndarray:
        begin = time.monotonic()
        started.set()
        time.sleep(model_s)
        runs.append((begin, time.monotonic()))
        return doubling(rows)

    async def scenario() -> None:
        batcher = DynamicBatcher(slow, max_batch_size=8, max_queue_delay_s=delay_s, max_pending=10)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(np.ones((1, 4), np.float32)))
        while not started.is_set():
            await asyncio.sleep(0.005)
        await asyncio.gather(first, batcher.submit(np.ones((1, 4), np.float32)))
        await batcher.close()

    asyncio.run(scenario())
    (_, first_end), (second_start, _) = runs
    assert second_start - first_end < delay_s / 2  # dispatched at once, not after another delay


@pytest.mark.parametrize("max_batch_size", [1, 8])  # in the loop's thread, and in the batcher's
def test_model_errors_reach_every_caller_of_the_batch(max_batch_size: int) -> None:
    def broken(rows: np.ndarray) -> np.ndarray:
        raise RuntimeError("model crashed")

    async def scenario() -> list[object]:
        batcher = DynamicBatcher(broken, max_batch_size=max_batch_size, max_queue_delay_s=0.01, max_pending=10)
        batcher.start()
        outcomes = await asyncio.gather(*(batcher.submit(np.ones((1, 4), np.float32)) for _ in range(3)),
                                        return_exceptions=True)
        await batcher.close()
        return outcomes

    assert all(isinstance(o, RuntimeError) for o in asyncio.run(scenario()))


@pytest.mark.parametrize("max_batch_size", [1, 8])
def test_the_model_runs_off_the_event_loop_only_where_a_batch_is_collected(max_batch_size: int) -> None:
    """Batching, the loop keeps collecting while the model runs in the batcher's thread;
    without, the model runs in the loop's thread, with no handoff to pay for."""
    threads: set[int] = set()

    def recording(rows: np.ndarray) -> np.ndarray:
        threads.add(threading.get_ident())
        return doubling(rows)

    async def scenario() -> list[np.ndarray]:
        batcher = DynamicBatcher(recording, max_batch_size=max_batch_size, max_queue_delay_s=0.01, max_pending=10)
        batcher.start()
        outputs = await asyncio.gather(*(batcher.submit(np.full((1, 4), float(i), np.float32)) for i in range(5)))
        await batcher.close()
        return list(outputs)

    outputs = asyncio.run(scenario())
    assert [float(o[0, 0]) for o in outputs] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert (threads == {threading.get_ident()}) == (max_batch_size == 1)


def test_only_the_reference_server_takes_several_workers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reference server's option"):
        deployments.start("torchserve", tmp_path / "1", tmp_path, deployments.ServeOptions(workers=2))
    with pytest.raises(ValueError, match="unknown server"):
        deployments.start("nginx", tmp_path / "1", tmp_path)
