"""A real Prometheus server for tests and scenarios: loopback only, a free port, its own
temporary config and data directory, and a process group that is always stopped.

    with PrometheusServer(["127.0.0.1:8000"]) as prometheus:
        prometheus.wait_for_scrape_after(time.time())
        prometheus.value("sum(model_predictions_total)")

Also `promtool_check`, which runs `promtool check metrics` on an exposition.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from reference.ports import free_port


class PrometheusError(RuntimeError):
    pass


def promtool_check(exposition: bytes, binary: str = "promtool") -> tuple[bool, str]:
    """(passed, promtool's output). Lint findings make promtool exit non-zero too."""
    done = subprocess.run([binary, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    return done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace").strip()


class PrometheusServer:
    def __init__(self, targets: list[str], *, scrape_interval_s: float = 1.0, binary: str = "prometheus",
                 start_timeout_s: float = 60.0) -> None:
        self.targets, self.scrape_interval_s = targets, scrape_interval_s
        self.binary, self.start_timeout_s = binary, start_timeout_s
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if shutil.which(self.binary) is None:
            raise PrometheusError(f"{self.binary} is not on PATH (Debian: apt-get install prometheus)")
        self._workdir = Path(tempfile.mkdtemp(prefix="mlsuite-prometheus-"))
        config = self._workdir / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": f"{round(self.scrape_interval_s * 1000)}ms", "evaluation_interval": "1m"},
            "scrape_configs": [{"job_name": "app", "static_configs": [{"targets": self.targets}]}],
        }))
        self.port = free_port()
        log = (self._workdir / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self._workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise PrometheusError(f"prometheus not ready after {self.start_timeout_s} s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        if self._workdir is None or not (self._workdir / "prometheus.log").exists():
            return ""
        return "\n".join((self._workdir / "prometheus.log").read_text(errors="replace").splitlines()[-lines:])

    def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API: the `result` list of a vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise PrometheusError(f"query {expression!r} failed: {body}")
        return list(body["data"]["result"])

    def wait_for_scrape_after(self, unix_time: float, timeout_s: float = 30.0) -> None:
        """Block until every target was scraped after `unix_time`, so what a query returns
        includes everything the targets did before it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            scrapes = self.query('timestamp(up{job="app"})')
            if len(scrapes) == len(self.targets) and all(float(s["value"][1]) > unix_time for s in scrapes):
                return
            time.sleep(self.scrape_interval_s / 4)
        raise PrometheusError(f"targets not scraped within {timeout_s} s: {self.query('up')}")

    def value(self, expression: str) -> float | None:
        """The value of a single-result query (None when it has no result)."""
        result = self.query(expression)
        if len(result) > 1:
            raise PrometheusError(f"{expression!r} returned {len(result)} series; aggregate it")
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
