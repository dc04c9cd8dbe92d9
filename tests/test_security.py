"""Security: what one user, a request or a planted link must not reach."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.gas import app
from examples.gas.__main__ import main as gas_main
from examples.gas.config import GasConfig
from examples.gas.samples import samples_dir
from examples.gas.stages import JOB_REQUESTS
from orchestrator import JobStatus, Worker
from orchestrator.cli import main as cli_main
from orchestrator.errors import InvalidKey, ObjectNotFound
from orchestrator.objects.local import LocalObjectStore

SAMPLE = samples_dir() / "test.vcf"


# -- the local object store ---------------------------------------------------------------------
def test_a_symbolic_link_inside_the_root_is_refused_not_followed(tmp_path: Path) -> None:
    # Given a store whose root holds a link to a directory outside it, and one to a file
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"keep me")
    store = LocalObjectStore(tmp_path / "root")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "escape").symlink_to(outside, target_is_directory=True)
    (tmp_path / "root" / "alias.txt").symlink_to(outside / "secret.txt")
    # When keys go through the links, Then reading, writing and deleting are refused
    for key in ("escape/secret.txt", "alias.txt"):
        with pytest.raises(InvalidKey, match="symbolic link"):
            store.get(key)
        with pytest.raises(InvalidKey, match="symbolic link"):
            store.put(key, b"overwritten")
        with pytest.raises(InvalidKey, match="symbolic link"):
            store.delete(key)
    assert (outside / "secret.txt").read_bytes() == b"keep me"
    # and ordinary keys still work
    store.put("a/b.txt", b"x")
    assert store.get("a/b.txt") == b"x"


def test_a_link_swapped_in_while_reading_never_lets_a_read_leave_the_root(tmp_path: Path) -> None:
    # Given a store with d/f.txt inside its root, and a directory outside it holding its own f.txt
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_bytes(b"outside")
    root = tmp_path / "root"
    store = LocalObjectStore(root)
    store.put("d/f.txt", b"inside")
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        # swap root/d between the real directory and a link to the outside one, as fast as it can
        nonlocal swaps
        (root / "link").symlink_to(outside, target_is_directory=True)
        while not stop.is_set():
            os.replace(root / "d", root / "real")
            os.replace(root / "link", root / "d")
            os.replace(root / "d", root / "link")
            os.replace(root / "real", root / "d")
            swaps += 1

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    # When thousands of reads race the swaps
    reads = {"inside": 0, "refused": 0}
    try:
        for _ in range(5000):
            try:
                got = store.get("d/f.txt")
            except (InvalidKey, ObjectNotFound):
                reads["refused"] += 1
                continue
            # Then no read ever returns the file outside the root
            assert got == b"inside", "a read followed a link out of the root"
            reads["inside"] += 1
    finally:
        stop.set()
        thread.join()
    assert swaps > 100 and reads["inside"] > 0 and reads["refused"] > 0, (swaps, reads)


def test_the_store_makes_its_directories_and_files_private(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "root")
    store.put("a/b/c.txt", b"x")
    for d in (tmp_path / "root", tmp_path / "root" / "a", tmp_path / "root" / "a" / "b"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert stat.S_IMODE((tmp_path / "root" / "a" / "b" / "c.txt").stat().st_mode) == 0o600


@pytest.mark.parametrize("key", ["x/", "a//b", "/x"])
def test_keys_that_would_alias_another_key_are_refused(tmp_path: Path, key: str) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("x", b"one")
    with pytest.raises(InvalidKey):
        store.put(key, b"two")
    assert store.get("x") == b"one"


# -- GAS requests ------------------------------------------------------------------------------
@pytest.fixture
def gas(tmp_path: Path) -> Iterator[app.Gas]:
    g = app.open_gas(f"sqlite:///{tmp_path}/gas.db", config=GasConfig(retention_s=1.0, retry_base_s=0.1))
    app.setup(g)
    yield g
    g.close()


def publish_request(gas: app.Gas, job_id: str, **override: object) -> None:
    """A request as a GAS web app publishes it, with fields overridden."""
    key = f"gas/alice/{job_id}~test.vcf"
    gas.resources.inputs.put(key, SAMPLE.read_bytes())
    req: dict[str, object] = {"job_id": job_id, "user_id": "alice", "input_file_name": "test.vcf",
                              "s3_inputs_bucket": gas.config.inputs_bucket, "s3_key_input_file": key,
                              "submit_time": 1700000000, "job_status": "PENDING"}
    req.update(override)
    gas.backend.store.create(job_id, user_id=str(req["user_id"]), fields={})
    gas.backend.topic.publish(JOB_REQUESTS, json.dumps(req), message_id=f"req-{job_id}")


@pytest.mark.parametrize("name", ["/tmp/gas-escape-{pid}.vcf", "../../../../tmp/gas-escape-{pid}.vcf", "..", ""])
def test_an_input_file_name_that_is_a_path_fails_the_job_and_writes_nothing(gas: app.Gas, name: str) -> None:
    target = Path(f"/tmp/gas-escape-{os.getpid()}.vcf")
    target.unlink(missing_ok=True)
    publish_request(gas, "evil", input_file_name=name.format(pid=os.getpid()))
    Worker(gas.pipeline, "annotate", gas.backend, wait_s=0).run(until_idle=True)
    job = gas.backend.store.get("evil")
    assert job is not None and job.status == JobStatus.FAILED
    assert "not a plain file name" in str(job.history[-1].reason)
    assert not target.exists()


def test_a_request_for_another_users_file_is_refused(gas: app.Gas) -> None:
    # Given bob's request naming alice's uploaded input
    publish_request(gas, "mine")  # alice's own, for contrast
    gas.resources.inputs.put("gas/alice/theirs~test.vcf", SAMPLE.read_bytes())
    publish_request(gas, "theirs", user_id="bob", s3_key_input_file="gas/alice/theirs~test.vcf")
    # When annotate runs
    Worker(gas.pipeline, "annotate", gas.backend, wait_s=0).run(until_idle=True)
    # Then bob's job FAILED with the reason and nothing was annotated for him; alice's completed
    theirs, mine = gas.backend.store.get("theirs"), gas.backend.store.get("mine")
    assert theirs is not None and theirs.status == JobStatus.FAILED
    assert "not in user 'bob'" in str(theirs.history[-1].reason)
    assert "s3_key_result_file" not in theirs.fields
    assert mine is not None and mine.status == JobStatus.COMPLETED


# -- status --user -----------------------------------------------------------------------------
def test_status_with_user_shows_only_that_users_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Given alice's job, with her email
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/gas.db"
    gas = app.open_gas(url)
    app.setup(gas)
    job_id = app.submit(gas, SAMPLE, user_id="alice", tier="premium", email="alice@example.org")
    gas.close()
    # When bob asks for it by id, through both command lines
    assert gas_main(["status", job_id, "--user", "bob", "--backend", url]) == 2
    assert cli_main(["status", job_id, "--user", "bob", "--backend", url]) == 2
    # Then neither shows it, and alice still can
    out = capsys.readouterr()
    assert "alice@example.org" not in out.out + out.err
    assert out.err.count("no job") == 2
    assert gas_main(["status", job_id, "--user", "alice", "--json", "--backend", url]) == 0
    assert "alice@example.org" in capsys.readouterr().out
