"""The generated page in a real headless Chromium (DevTools protocol): no console errors, no
resource loaded from anywhere but the page itself, every section present, every plot with
labelled axes and units, summary numbers equal to the records'. A full-page screenshot is
kept under pytest's temporary folder (printed; never committed)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from suite.report import write_report
from tests.test_suite_report import SECTION_IDS, example_results, raw_metric, raw_records

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MAX_SHOT_HEIGHT = 16000  # px: beyond this Chromium's capture fails

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install "
                                                                              "chromium)")]

PAGE_FACTS = """JSON.stringify({
  ids: [...document.querySelectorAll('section[id]')].map(e => e.id),
  plots: [...document.querySelectorAll('figure.plot')].map(f => ({
    id: f.id, svg: !!f.querySelector('svg'),
    x: (f.querySelector('[id$="-xlabel"]') || {}).textContent || '',
    y: (f.querySelector('[id$="-ylabel"]') || {}).textContent || ''})),
  training: [...document.querySelectorAll('#training tbody tr')].map(
    tr => [...tr.cells].map(td => [td.textContent, td.dataset.value || null])),
  linksOut: [...document.querySelectorAll('[src],[href],link,script')].map(
    e => e.getAttribute('src') || e.getAttribute('href') || e.tagName).filter(
    u => !u.startsWith('#') && !u.startsWith('data:'))
})"""


class DevTools:
    """A minimal DevTools protocol client over one page's websocket."""

    def __init__(self, ws) -> None:  # type: ignore[no-untyped-def]
        self.ws, self.next_id, self.events, self.pending = ws, 0, [], {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data:
                self.pending.pop(data["id"]).set_result(data)
            else:
                self.events.append(data)

    async def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 60)
        assert "error" not in reply, reply
        return reply["result"]

    async def until(self, method: str, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while not any(e["method"] == method for e in self.events):
                await asyncio.sleep(0.05)


async def inspect(page: Path, profile: Path, shot: Path) -> tuple[dict, list[dict]]:
    import aiohttp

    chromium = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
        "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "--window-size=1400,1000",
        "about:blank", stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        async with asyncio.timeout(60):
            while not (match := re.search(rb"DevTools listening on ws://127\.0\.0\.1:(\d+)/",
                                          await chromium.stderr.readline())):
                pass
        async with aiohttp.ClientSession() as http:
            targets = await (await http.get(f"http://127.0.0.1:{int(match[1])}/json/list")).json()
            url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with http.ws_connect(url, max_msg_size=0) as ws:
                tools = DevTools(ws)
                for domain in ("Page", "Runtime", "Log", "Network"):
                    await tools.call(f"{domain}.enable")
                await tools.call("Page.navigate", url=page.as_uri())
                await tools.until("Page.loadEventFired")
                facts = json.loads((await tools.call("Runtime.evaluate", expression=PAGE_FACTS,
                                                     returnByValue=True))["result"]["value"])
                size = (await tools.call("Page.getLayoutMetrics"))["cssContentSize"]
                image = await tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                         clip={"x": 0, "y": 0, "width": size["width"],
                                               "height": min(size["height"], MAX_SHOT_HEIGHT), "scale": 1})
                shot.write_bytes(base64.b64decode(image["data"]))
                tools.reader.cancel()
                return facts, tools.events
    finally:
        os.killpg(chromium.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(chromium.wait(), 20)
        except TimeoutError:
            os.killpg(chromium.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict], Path]:
    pytest.importorskip("aiohttp")
    folder = example_results(tmp_path_factory.mktemp("results"))
    write_report(folder)
    shot = tmp_path_factory.mktemp("screenshot") / "report.png"
    facts, events = asyncio.run(inspect(folder / "index.html", tmp_path_factory.mktemp("chromium"), shot))
    print(f"screenshot: {shot}")
    return facts, events, shot


def test_no_console_error_and_nothing_loaded_from_elsewhere(page: tuple[dict, list[dict], Path]) -> None:
    facts, events, _ = page
    errors = [e for e in events if e["method"] in ("Runtime.exceptionThrown", "Runtime.consoleAPICalled")
              and (e["method"] == "Runtime.exceptionThrown" or e["params"]["type"] in ("error", "warning"))]
    errors += [e for e in events if e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
    assert errors == []
    requested = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    assert requested and all(url.startswith("file://") and url.endswith("/index.html") for url in requested)
    assert all(not re.match(r"^(https?:)?//", link) for link in facts["linksOut"])


def test_every_section_and_every_plot_with_labelled_axes(page: tuple[dict, list[dict], Path]) -> None:
    facts, _, shot = page
    assert set(SECTION_IDS) <= set(facts["ids"])
    assert len(facts["plots"]) >= 7
    for plot in facts["plots"]:
        assert plot["svg"], plot
        assert re.search(r"\(.+\)", plot["x"]) and re.search(r"\(.+\)", plot["y"]), plot
    assert shot.stat().st_size > 50_000


def test_the_training_row_shows_the_records_numbers(page: tuple[dict, list[dict], Path]) -> None:
    facts, _, _ = page
    amp = next(r for r in raw_records() if r["scenario"] == "training.amp" and r["runs"])
    row = next(cells for cells in facts["training"]
               if cells[0][0] == "AMP bf16" and amp["env"]["machine_id"][:8] in cells[2][0])
    assert float(row[3][1]) == raw_metric(amp, "amp_speedup")["value"]
    assert "⚠" in row[3][0] and "oversubscribed" in row[3][0]
