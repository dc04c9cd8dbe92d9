"""The object-store contract, run on every store: local files, S3 (moto), PostgreSQL, and a
prefixed view over each. A store is a dictionary of bytes by key: checked against one over
random sequences of writes and deletes, plus streamed writes, key validation and ``presigns``."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.base import ObjectStore
from orchestrator.errors import InvalidKey, ObjectNotFound
from orchestrator.objects.local import LocalObjectStore, NotAFolder
from orchestrator.objects.prefixed import PrefixedObjectStore

KEYS = st.lists(st.sampled_from(["a", "b", "dir", "x.vcf", "n-1", "ü"]), min_size=1, max_size=3).map("/".join)
OPS = st.lists(st.tuples(st.sampled_from(["put", "put_file", "delete"]), KEYS, st.binary(max_size=300)),
               max_size=12)


@pytest.fixture(params=["local", "local-prefixed", "s3", "s3-prefixed", "postgres", "postgres-prefixed"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    kind, _, prefixed = request.param.partition("-")
    if kind == "s3":
        from helpers import aws_test_env
        from moto import mock_aws

        from orchestrator.objects.s3 import S3ObjectStore

        aws_test_env(monkeypatch)
        with mock_aws():
            inner: ObjectStore = S3ObjectStore("contract-objects")
            yield PrefixedObjectStore(inner, "gas/results") if prefixed else inner
        return
    if kind == "postgres":
        from orchestrator.backends import postgres_backend

        backend = postgres_backend(request.getfixturevalue("pg_url"))
        assert backend.objects is not None
        yield PrefixedObjectStore(backend.objects, "gas/results") if prefixed else backend.objects
        backend.close()
        return
    inner = LocalObjectStore(tmp_path / "objects")
    yield PrefixedObjectStore(inner, "gas/results") if prefixed else inner


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
@given(OPS)
def test_a_store_keeps_what_was_last_written_under_each_key(store: ObjectStore, ops: list[tuple[str, str, bytes]]
                                                           ) -> None:
    view = PrefixedObjectStore(store, uuid.uuid4().hex)  # each example on keys of its own
    # a file system cannot hold "a" and "a/b" both: there the second is refused, and nothing changes
    on_files = isinstance(getattr(store, "inner", store), LocalObjectStore)
    model: dict[str, bytes] = {}
    for op, key, data in ops:
        if op in ("put", "put_file"):
            clash = [k for k in model if k.startswith(f"{key}/") or key.startswith(f"{k}/")]
            try:
                view.put(key, data) if op == "put" else view.put_file(key, io.BytesIO(data))
            except NotAFolder:
                assert on_files and clash
                continue
            assert not (on_files and clash)
            model[key] = data
        else:
            view.delete(key)  # idempotent: deleting a key never written is fine
            model.pop(key, None)
    for _, key, _ in ops:
        assert view.exists(key) == (key in model)
        if key in model:
            assert view.get(key) == model[key]
        else:
            with pytest.raises(ObjectNotFound):
                view.get(key)


def test_a_large_file_is_written_from_a_stream(store: ObjectStore) -> None:
    big = bytes(range(256)) * 40_000  # 10 MB: S3 takes it in parts
    store.put_file("big/file.bin", io.BytesIO(big))
    assert store.get("big/file.bin") == big


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/../../b", "nul\x00", "", "\ud800", "k" * 1025, None, 5])
def test_a_key_that_could_leave_the_store_is_refused(store: ObjectStore, bad: str) -> None:
    # (a lone surrogate, a key over S3's 1,024 bytes and a key that is no text raised
    # UnicodeEncodeError, OSError or TypeError from one store or another)
    for call in (lambda: store.put(bad, b"x"), lambda: store.put_file(bad, io.BytesIO(b"x")),
                 lambda: store.get(bad), lambda: store.exists(bad), lambda: store.delete(bad)):
        with pytest.raises(InvalidKey):
            call()


@pytest.mark.parametrize("data", [None, "text", 5])
def test_object_data_is_bytes(store: ObjectStore, data: object) -> None:
    with pytest.raises(TypeError, match="must be bytes"):  # (None was stored as an empty object)
        store.put("d", data)  # type: ignore[arg-type]
    assert not store.exists("d")


def test_on_a_file_system_a_key_part_longer_than_a_file_name_is_refused(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    with pytest.raises(InvalidKey, match="255-byte"):  # (OSError: File name too long)
        store.put("dir/" + "y" * 256, b"x")


def test_url_names_the_object_and_presigns_says_whether_a_browser_may_fetch_it(store: ObjectStore) -> None:
    store.put("dir/x.vcf", b"data")
    url = store.url("dir/x.vcf", expires_s=60)
    assert "x.vcf" in url
    assert store.presigns == url.startswith(("http://", "https://"))


def test_on_a_file_system_a_key_whose_objects_were_all_deleted_can_become_an_object(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("b/c/d", b"1")
    store.put("e", b"2")
    with pytest.raises(NotAFolder, match="a key is an object or a folder"):
        store.put("b", b"x")
    with pytest.raises(NotAFolder):
        store.put("e/f", b"x")
    assert not store.exists("e/f") and not store.exists("b")
    store.delete("b")  # a folder, not an object: nothing to delete
    assert store.get("b/c/d") == b"1"
    store.delete("b/c/d")
    store.put("b", b"now an object")
    assert store.get("b") == b"now an object"
