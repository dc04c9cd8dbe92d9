"""What only the PostgreSQL backend has: its schema's version, LISTEN/NOTIFY wake-ups, and
surviving killed connections and a restarted server. (The contract suite, the controller tests,
the crash properties and the SIGKILL tests run on it beside SQLite, in their own modules.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pg import PrivateCluster, new_schema, with_schema

from orchestrator.backends import open_backend, split_postgres_url
from orchestrator.base import Outgoing, QueueSpec
from orchestrator.errors import ConfigError
from orchestrator.status import JobStatus
from orchestrator.transports import postgres as pg_transport

ROOT = Path(__file__).resolve().parents[1]

PIPELINE = textwrap.dedent(
    """
    import time
    from orchestrator import Pipeline, Result, JobStatus

    pipeline = Pipeline("pgfaults")

    @pipeline.stage("first", source="a", emit_to="b", visibility_timeout_s=3, max_receives=50, wait_s=0.2,
                    retry_base_s=0.1, retry_max_s=1)
    def first(ctx, msg):
        time.sleep(0.002)
        return Result(status=JobStatus.RUNNING, fields={"n": msg.payload["n"] + 1}, emit=[{"n": msg.payload["n"] + 1}])

    @pipeline.stage("second", source="b", visibility_timeout_s=3, max_receives=50, wait_s=0.2,
                    retry_base_s=0.1, retry_max_s=1)
    def second(ctx, msg):
        time.sleep(0.002)
        return Result(status=JobStatus.COMPLETED, fields={"m": msg.payload["n"] * 10})
    """
)


def cli(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # GAS checks whether to archive after the retention period: 1 s, not 5 min
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd), str(ROOT)]), GAS_RETENTION_S="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def schema_of(url: str) -> str:
    return split_postgres_url(url)[1]["schema"]


def admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(split_postgres_url(url)[0], autocommit=True)


# -- the schema ------------------------------------------------------------------------------
def test_a_schema_newer_than_this_code_is_refused_with_the_reason(pg_url: str) -> None:
    # Given a schema that a newer orchestrator migrated
    open_backend(pg_url).close()
    with admin(pg_url) as conn:
        conn.execute(f"UPDATE {schema_of(pg_url)}.schema_version SET version = 99")
    # When a library user, then a worker, opens it
    with pytest.raises(ConfigError, match="version 99, newer than this orchestrator knows"):
        open_backend(pg_url)
    out = cli("-m", "orchestrator", "worker", "examples.quickstart:pipeline", "--backend", pg_url,
              "--stage", "square", "--until-idle")
    # Then both refuse, in one line, and nothing ran
    assert out.returncode == 2
    assert "newer than this orchestrator knows" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_another_applications_tables_are_not_adopted(pg_url: str) -> None:
    with admin(pg_url) as conn:
        conn.execute(f"CREATE SCHEMA {schema_of(pg_url)}")
        conn.execute(f"CREATE TABLE {schema_of(pg_url)}.jobs (id int)")
    with pytest.raises(ConfigError, match="tables orchestrator did not create"):
        open_backend(pg_url)


def test_an_unreachable_server_is_a_one_line_error_at_once(tmp_path: Path) -> None:
    t0 = time.monotonic()
    out = cli("-m", "orchestrator", "status", "--backend", "postgresql://nobody@127.0.0.1:1/none", "x")
    assert out.returncode == 2 and "cannot open PostgreSQL database" in out.stderr
    assert "Traceback" not in out.stderr and time.monotonic() - t0 < 15


def test_libpq_environment_variables_fill_in_the_url(pg_server: str, pg_url: str) -> None:
    # Given only PG* variables naming the server, and a URL naming just the schema
    parts = psycopg.conninfo.conninfo_to_dict(pg_server)
    env = {"PGHOST": str(parts.get("host", "")), "PGPORT": str(parts.get("port", "5432")),
           "PGUSER": str(parts.get("user", "")), "PGDATABASE": str(parts.get("dbname", ""))}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if v})
    try:
        b = open_backend(f"postgresql:///?schema={schema_of(pg_url)}")
        b.store.create("via-env")
        b.close()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # Then the job is where the full URL finds it
    b = open_backend(pg_url)
    assert b.store.get("via-env") is not None
    b.close()


# -- LISTEN/NOTIFY -----------------------------------------------------------------------------
def test_a_send_wakes_an_idle_receiver_at_once(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a receiver long-polling an empty queue, which without a notification would next
    # look after 30 s
    monkeypatch.setattr(pg_transport, "MAX_IDLE_WAIT_S", 30.0)
    receiver, sender = open_backend(pg_url), open_backend(pg_url)
    receiver.transport.ensure_queue(QueueSpec("wake"))
    got: list[float] = []

    def poll() -> None:
        ds = receiver.transport.receive("wake", max_messages=1, wait_s=20, visibility_s=30)
        got.append(time.monotonic() if ds else -1.0)

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.5)
    # When another process's connection sends
    sent_at = time.monotonic()
    sender.transport.send("wake", Outgoing(body="{}"))
    t.join(25)
    # Then the receiver had it within moments, not at its next poll
    assert got and got[0] > 0, "the receiver got nothing"
    assert got[0] - sent_at < 2.0, f"woken {got[0] - sent_at:.2f}s after the send"
    receiver.close()
    sender.close()


# -- faults ----------------------------------------------------------------------------------
def _start(tmp_path: Path, url: str, n_jobs: int) -> tuple[object, list[subprocess.Popen[str]]]:
    (tmp_path / "pgfaults.py").write_text(PIPELINE)
    sys.path.insert(0, str(tmp_path))
    try:
        import pgfaults  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    backend = open_backend(url)
    pgfaults.pipeline.setup(backend)
    for i in range(n_jobs):
        pgfaults.pipeline.submit(backend, job_id=f"job-{i:04d}", payload={"n": i}, queue="a")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "worker", "pgfaults:pipeline", "--backend", url,
                               "--stage", stage, "--log-level", "warning", "--wait", "0.2"],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for stage in ("first", "first", "second")]
    # No --until-idle: a "second" worker could find its queue idle while "first" waits out an
    # outage, and leave. They run until every job is done (or the deadline), then are stopped.
    return backend, procs


def _finish(backend: object, procs: list[subprocess.Popen[str]], n_jobs: int, timeout: float = 180) -> str:
    from orchestrator.backends import Backend

    assert isinstance(backend, Backend)
    deadline = time.time() + timeout
    while time.time() < deadline and len(backend.store.query(status=JobStatus.COMPLETED)) < n_jobs:
        time.sleep(0.3)
    logs = ""
    for p in procs:
        p.terminate()
        _, err = p.communicate(timeout=60)
        logs += err
    jobs = backend.store.query()
    assert len(jobs) == n_jobs
    not_done = [j.job_id for j in jobs if j.status != JobStatus.COMPLETED]
    assert not not_done, f"{len(not_done)} jobs not completed: {not_done[:5]}\n{logs[-3000:]}"
    twice = [j.job_id for j in jobs if j.commits("first") != 1 or j.commits("second") != 1]
    assert not twice, f"steps committed other than once: {twice[:5]}"
    assert all(j.fields["m"] == (int(j.job_id[4:]) + 1) * 10 for j in jobs)
    for q in ("a", "b", "a-dlq", "b-dlq"):
        assert backend.transport.depth(q).total == 0, q
    return logs


@pytest.mark.slow
def test_connections_killed_mid_transaction_lose_nothing(tmp_path: Path, pg_url: str) -> None:
    # Given 300 jobs flowing through three worker processes
    n_jobs = 300
    backend, procs = _start(tmp_path, pg_url, n_jobs)
    # When every worker connection is killed (pg_terminate_backend) again and again mid-run
    killed = 0
    with admin(pg_url) as conn:
        for _ in range(12):
            time.sleep(0.25)
            killed += sum(1 for (ok,) in conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                (f"orchestrator:{schema_of(pg_url)}%",)).fetchall() if ok)
    # Then every job completes, each step committed once, and the workers said they retried
    logs = _finish(backend, procs, n_jobs)
    assert killed >= 12
    assert "postgres_unavailable_retrying" in logs


@pytest.fixture
def private_pg() -> Iterator[PrivateCluster]:
    cluster = PrivateCluster()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.mark.slow
def test_workers_ride_out_a_server_restart(tmp_path: Path, private_pg: PrivateCluster) -> None:
    # Given 300 jobs flowing through three worker processes, on a server of this test's own
    # (stopping the machine's shared one would break every other user of it)
    schema = new_schema()
    url = with_schema(private_pg.url, schema)
    n_jobs = 300
    backend, procs = _start(tmp_path, url, n_jobs)
    # (flowing: a worker that has not connected yet when the server goes down fails at once,
    # as a misconfigured one should; a fixed sleep raced the workers' start on a busy machine)
    deadline = time.time() + 60
    while not backend.store.query(status=JobStatus.COMPLETED) and time.time() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.1)
    # When the server stops for 3 s and starts again
    private_pg.stop()
    try:
        time.sleep(3.0)
    finally:
        private_pg.start()
    # Then the workers reconnect (and log it) and finish every job, each step once
    logs = _finish(backend, procs, n_jobs)
    assert "postgres_unavailable_retrying" in logs
    assert "postgres_reconnected" in logs


# -- the examples on PostgreSQL -----------------------------------------------------------------
def test_the_quickstart_demo_runs_on_postgres(pg_url: str) -> None:
    out = cli("-m", "examples.quickstart", "--backend", pg_url, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "200/200 completed correctly, 0 lost, 0 committed twice" in out.stdout


def test_gas_runs_on_postgres_from_its_command_line(pg_url: str, tmp_path: Path) -> None:
    sample = ROOT / "examples" / "gas" / "samples" / "test.vcf"
    assert cli("-m", "examples.gas", "setup", "--backend", pg_url).returncode == 0
    sub = cli("-m", "examples.gas", "--log-level", "error", "submit", str(sample), "--user", "ann",
              "--tier", "premium", "--backend", pg_url)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split()[-1]
    work = cli("-m", "examples.gas", "--log-level", "error", "worker", "--stage", "all", "--until-idle",
               "--backend", pg_url, timeout=180)
    assert work.returncode == 0, work.stderr[-2000:]
    status = cli("-m", "examples.gas", "status", job_id, "--json", "--backend", pg_url)
    assert status.returncode == 0, status.stderr
    assert '"COMPLETED"' in status.stdout
    # the annotated file is in the database, where every machine's workers find it
    b = open_backend(pg_url)
    assert any(k.startswith("gas/results/") for k in b.objects.keys())  # type: ignore[union-attr]  # noqa: SIM118
    b.close()


def test_a_schema_url_is_a_plain_identifier(pg_server: str) -> None:
    with pytest.raises(ConfigError, match="schema name"):
        open_backend(with_schema(pg_server, "bad;drop"))


def test_data_errors_are_refused_at_once_and_never_taken_for_an_outage(pg_url: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    # Given a PostgreSQL store that retries an outage for 30 s
    import random as _random

    from orchestrator.outage import is_outage

    backend = open_backend(pg_url)
    try:
        # When a write carries what PostgreSQL refuses whatever the moment: a NUL in a text
        # column, or a key too large for its index (random text does not compress under the limit)
        huge = "".join(_random.Random(1).choices("abcdefghijklmnopqrstuvwxyz0123456789", k=5000))
        for job_id in ("nul\x00id", huge):
            started = time.monotonic()
            with pytest.raises(psycopg.Error) as refused:
                backend.store.create_doc(job_id)
            # Then it fails at once, as a data error, not an outage to wait out
            assert time.monotonic() - started < 5
            assert not is_outage(refused.value), refused.value
        # while a server that cannot be reached is one
        with pytest.raises(psycopg.OperationalError) as down:
            psycopg.connect("postgresql://nobody@127.0.0.1:1/x", connect_timeout=1)
        assert is_outage(down.value)
    finally:
        backend.close()
