"""Where the PostgreSQL tests find a server, and a fresh schema per test.

``ORCHESTRATOR_TEST_POSTGRES_URL`` names the server (default: the local one, trust auth,
database ``test``). Without a reachable server the tests skip with the reason, except in CI
(``CI`` set), where they fail: CI's machine runs PostgreSQL, so a skip would hide a break.
"""

from __future__ import annotations

import os
import uuid

import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    url = os.environ.get("ORCHESTRATOR_TEST_POSTGRES_URL", DEFAULT_URL)
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        why = f"no PostgreSQL at {url} ({type(exc).__name__}: {exc}); set ORCHESTRATOR_TEST_POSTGRES_URL"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return url


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


class PrivateCluster:
    """A PostgreSQL server of the test's own: ``initdb`` in a temporary directory, ``pg_ctl``
    on a free port, removed afterwards. A test that stops, kills or restarts a server uses
    this, never the machine's shared one (another test run, or anyone else, may be using it)."""

    def __init__(self) -> None:
        import pwd
        import shutil
        import socket
        import tempfile
        from pathlib import Path

        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        found = shutil.which("initdb")
        initdb = Path(found) if found else (bins[-1] if bins else None)
        if initdb is None:
            why = "no initdb to start a private PostgreSQL (apt install postgresql)"
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)
        self.bin = initdb.parent
        # initdb refuses to run as root: then the cluster belongs to the postgres user
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.dir = Path(tempfile.mkdtemp(prefix="orchestrator-pg-"))
        self.data, self.log = self.dir / "data", self.dir / "server.log"
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        import subprocess

        cmd = [str(self.bin / tool), *args]
        if self.user is not None:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, timeout=120, capture_output=True)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        import shutil
        import subprocess

        subprocess.run([*(["runuser", "-u", "postgres", "--"] if self.user else []), str(self.bin / "pg_ctl"),
                        "-D", str(self.data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
