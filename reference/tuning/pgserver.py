"""A private PostgreSQL server for an Optuna study: Debian's `postgresql` binaries, a data
directory of its own, loopback only, a generated password, always stopped.

Teams that run Optuna on many machines share one RDB; this starts a real one so the same
code (an SQLAlchemy URL handed to `RDBStorage`) is exercised here. PostgreSQL refuses to
run as root, so under root (CI) initdb and the server run as the `postgres` user that
Debian's package creates. The server is a child of this process (no `pg_ctl` daemon, which
would leave our process group): a harness that kills our group kills it too.

    with postgres_server() as server:
        optuna.create_study(storage=server.url)
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reference import lifeline
from reference.lifeline import preexec
from reference.ports import LOOPBACK, free_port

RUN_AS_WHEN_ROOT = "postgres"
USER = "mlsuite"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
DRIVER = "postgresql+psycopg2"


def find_bindir() -> Path | None:
    """Where initdb/postgres live: next to `pg_ctl` on PATH, else the newest
    /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH)."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return versions[-1].parent if versions else None


def unavailable() -> str | None:
    """Why a server cannot be started here (None when it can)."""
    bindir = find_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        return ("PostgreSQL binaries not found (pg_ctl not on PATH, no /usr/lib/postgresql/*/bin; "
                "apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS_WHEN_ROOT)
        except KeyError:
            return f"running as root and there is no {RUN_AS_WHEN_ROOT!r} user for PostgreSQL to run as"
    return None


@dataclass(frozen=True)
class PostgresServer:
    url: str  # SQLAlchemy URL, password included: hand it to RDBStorage
    port: int
    database: str
    data_dir: Path
    start_s: float  # initdb + server up + database created
    pid: int

    @property
    def redacted_url(self) -> str:
        return f"{DRIVER}://{USER}:***@{LOOPBACK}:{self.port}/{self.database}"


def _owner() -> tuple[int, int] | None:
    """(uid, gid) to run as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(RUN_AS_WHEN_ROOT)
    return entry.pw_uid, entry.pw_gid


def _run(command: list[str], owner: tuple[int, int] | None, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=START_TIMEOUT_S,
                          user=owner[0] if owner else None, group=owner[1] if owner else None, cwd="/")
    if done.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Fast shutdown (SIGINT: roll back open transactions, close connections), then kill."""
    lifeline.stop(process, signal.SIGINT, STOP_TIMEOUT_S)


def _wait_ready(bindir: Path, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        probe = subprocess.run([str(bindir / "pg_isready"), "-q", "-h", LOOPBACK, "-p", str(port)], check=False)
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"postgres not ready after {START_TIMEOUT_S:.0f}s: {log.read_text(errors='replace')[-2000:]}")


@contextmanager
def postgres_server(database: str = "optuna", settings: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    """Initialise a data directory, start the server on a free loopback port with
    password (scram-sha-256) authentication, create `database`; on exit stop the server
    and delete everything. `settings` are extra `-c name=value` server settings."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    bindir = find_bindir()
    assert bindir is not None
    owner = _owner()
    # under root the server runs as another user, who must reach the directory: /tmp, not $TMPDIR
    root = Path(tempfile.mkdtemp(prefix="mlsuite-pg-", dir="/tmp" if owner else None))
    process: subprocess.Popen[bytes] | None = None
    try:
        started = time.perf_counter()
        password = secrets.token_urlsafe(24)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if owner:
            for path in (root, pwfile):
                os.chown(path, *owner)
        data = root / "data"
        _run([str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
              "-E", "UTF8", "--no-sync", "--no-instructions"], owner)
        pwfile.unlink()
        port = free_port()
        log = root / "server.log"
        options = {"listen_addresses": LOOPBACK, "port": str(port), "unix_socket_directories": str(root),
                   **(settings or {})}
        command = [str(bindir / "postgres"), "-D", str(data), *(f"-c{k}={v}" for k, v in options.items())]
        with log.open("wb") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd="/",
                                       user=owner[0] if owner else None, group=owner[1] if owner else None,
                                       preexec_fn=preexec())  # dies with us, even if we are SIGKILLed
        _wait_ready(bindir, port, process, log)
        _run([str(bindir / "createdb"), "-h", LOOPBACK, "-p", str(port), "-U", USER, database], None,
             env={**os.environ, "PGPASSWORD": password})
        url = f"{DRIVER}://{USER}:{password}@{LOOPBACK}:{port}/{database}"
        yield PostgresServer(url=url, port=port, database=database, data_dir=data,
                             start_s=time.perf_counter() - started, pid=process.pid)
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(root, ignore_errors=True)
