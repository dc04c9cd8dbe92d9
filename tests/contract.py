"""One contract for every adapter. Backend test modules subclass these classes and supply
the fixtures ``transport`` / ``topic`` / ``store`` and ``advance_clock(seconds)``.

The classes have no ``test_`` prefix so pytest collects them only through subclasses.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable

import pytest

from orchestrator import records
from orchestrator.base import Backend, Delivery, Outgoing, QueueSpec, StatusStore, Topic, Transport
from orchestrator.codec import Codec
from orchestrator.envelope import Envelope
from orchestrator.errors import BodyTooLarge, ConflictError, InvalidTransition, JobNotFound, LeaseLostError
from orchestrator.status import JobStatus, OutMessage

Advance = Callable[[float], None]
VIS = 10.0


def qname(prefix: str = "q") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def make_queue(transport: Transport, **kw: object) -> str:
    name = qname()
    transport.ensure_queue(QueueSpec(name, visibility_timeout_s=VIS, dead_letter=f"{name}-dlq", **kw))  # type: ignore[arg-type]
    return name


def one(transport: Transport, queue: str, vis: float = VIS):  # type: ignore[no-untyped-def]
    got = transport.receive(queue, max_messages=1, wait_s=0, visibility_s=vis)
    assert len(got) == 1, f"expected one message in {queue}, got {len(got)}"
    return got[0]


class TransportContract:
    #: whether a stale receipt handle is refused (SQS "may" still delete; moto always does)
    fences_stale_receipts = True
    #: whether concurrent receives never hand out one message twice
    exclusive_concurrent_receive = True
    #: whether receives follow exact priorities, oldest first within one (SQS: bands, unordered)
    orders_within_priority = True

    def test_a_sent_message_is_received_once_with_its_body(self, transport: Transport) -> None:
        q = make_queue(transport)
        transport.send(q, Outgoing(body='{"a": 1}', message_id="m1"))
        d = one(transport, q)
        assert (d.body, d.message_id, d.receive_count) == ('{"a": 1}', "m1", 1)
        assert transport.receive(q, max_messages=10, wait_s=0, visibility_s=VIS) == []

    def test_a_receive_of_max_batch_takes_up_to_that_many_distinct_messages(self, transport: Transport) -> None:
        q = make_queue(transport)
        transport.send_batch(q, [Outgoing(body=str(i), message_id=f"m{i}") for i in range(transport.max_batch + 3)])
        got = transport.receive(q, max_messages=transport.max_batch, wait_s=0, visibility_s=VIS)
        assert 1 <= len(got) <= transport.max_batch
        assert len({d.message_id for d in got}) == len(got)
        rest = []
        while more := transport.receive(q, max_messages=transport.max_batch, wait_s=0, visibility_s=VIS):
            rest += more
        assert len(got) + len(rest) == transport.max_batch + 3

    def test_an_unacked_message_reappears_after_the_visibility_timeout_s(self, transport: Transport, advance_clock: Advance) -> None:
        q = make_queue(transport)
        transport.send(q, Outgoing(body="x"))
        first = one(transport, q, vis=2)
        advance_clock(3)
        second = one(transport, q, vis=2)
        assert second.receive_count == 2
        assert second.receipt != first.receipt

    def test_ack_deletes_and_a_stale_receipt_deletes_nothing(self, transport: Transport, advance_clock: Advance) -> None:
        q = make_queue(transport)
        transport.send(q, Outgoing(body="x"))
        stale = one(transport, q, vis=2)
        advance_clock(3)
        fresh = one(transport, q, vis=2)
        if not self.fences_stale_receipts:
            pytest.skip("this backend may accept stale receipt handles; the store's claim fences stale holders")
        transport.ack(stale)  # the stale holder's delete must not remove the redelivered copy
        assert transport.depth(q).in_flight == 1
        assert transport.ack(fresh) is True
        assert transport.depth(q).total == 0
        assert transport.ack(fresh) is False  # idempotent

    def test_ack_batch_answers_as_ack_does_for_each_delivery(self, transport: Transport, advance_clock: Advance) -> None:
        q = make_queue(transport)
        transport.send_batch(q, [Outgoing(body=f"m{i}") for i in range(3)])
        got = transport.receive(q, max_messages=3, wait_s=0, visibility_s=2)
        assert len(got) == 3
        assert transport.ack_batch(got[:1]) == [True]
        if not self.fences_stale_receipts:
            pytest.skip("this backend may accept stale receipt handles; the store's claim fences stale holders")
        # the first is gone: its receipt is stale now; the other two are deleted
        assert transport.ack_batch(got) == [False, True, True]
        assert transport.depth(q).total == 0

    def test_extend_keeps_the_lease_and_a_lost_lease_refuses_to_extend(self, transport: Transport, advance_clock: Advance) -> None:
        q = make_queue(transport)
        transport.send(q, Outgoing(body="x"))
        d = one(transport, q, vis=2)
        advance_clock(1.5)
        transport.extend(d, 2)
        advance_clock(1.5)
        assert transport.receive(q, max_messages=1, wait_s=0, visibility_s=2) == []
        advance_clock(1)
        again = one(transport, q, vis=2)
        if self.fences_stale_receipts:
            with pytest.raises(LeaseLostError):
                transport.extend(d, 2)
        transport.ack(again)

    def test_release_makes_the_message_visible_after_the_delay(self, transport: Transport, advance_clock: Advance) -> None:
        q = make_queue(transport)
        transport.send(q, Outgoing(body="x"))
        d = one(transport, q)
        assert transport.release(d, 0) is True
        d2 = one(transport, q)
        transport.release(d2, 2)
        assert transport.receive(q, max_messages=1, wait_s=0, visibility_s=VIS) == []
        depth = transport.depth(q)  # SQS counts a released message as in flight, not delayed
        assert depth.visible == 0 and depth.delayed + depth.in_flight == 1
        advance_clock(2.5)
        assert one(transport, q).receive_count == 3

    def test_a_delayed_send_is_invisible_until_its_delay(self, transport: Transport, advance_clock: Advance) -> None:
        q = make_queue(transport)
        transport.send(q, Outgoing(body="x", delay_s=2))
        assert transport.receive(q, max_messages=1, wait_s=0, visibility_s=VIS) == []
        advance_clock(2.5)
        one(transport, q)

    def test_the_queues_own_delay_holds_a_send_that_names_none(self, transport: Transport,
                                                                advance_clock: Advance) -> None:
        # Given a queue that delays every message by 4 s
        q = make_queue(transport, delay_s=4)
        # When one message names no delay, one its own of 1 s, in one batch
        transport.send_batch(q, [Outgoing(body="queue's", message_id="m1"),
                                 Outgoing(body="own", message_id="m2", delay_s=1)])
        # Then the second comes after its own delay, the first after the queue's
        assert transport.receive(q, max_messages=10, wait_s=0, visibility_s=VIS) == []
        advance_clock(2)
        assert [d.body for d in transport.receive(q, max_messages=10, wait_s=0, visibility_s=VIS)] == ["own"]
        advance_clock(3)
        assert [d.body for d in transport.receive(q, max_messages=10, wait_s=0, visibility_s=VIS)] == ["queue's"]

    def test_a_snooze_brings_the_message_back_after_its_delay_with_its_receive_taken_back(
            self, transport: Transport, advance_clock: Advance) -> None:
        # Given a message received once
        q = make_queue(transport)
        transport.send(q, Outgoing(body="x", message_id="m1"))
        d = one(transport, q)
        first_seen = d.first_received_at
        for _ in range(3):
            # When it is snoozed for 5 s
            assert transport.snooze(d, 5) is True
            # Then it is not there before, and then it is, its receive taken back
            advance_clock(3)
            assert transport.receive(q, max_messages=1, wait_s=0, visibility_s=VIS) == []
            advance_clock(3)
            d = one(transport, q)
            assert (d.body, d.message_id, d.receive_count) == ("x", "m1", 1)
            assert d.first_received_at == pytest.approx(first_seen, abs=1.0)
        transport.ack(d)
        assert transport.depth(q).total == 0

    def test_a_delay_past_the_queues_own_cap_is_kept_to_the_second(self, transport: Transport,
                                                                     advance_clock: Advance) -> None:
        # Given a message delayed by twice the longest delay SQS takes, and a half minute
        q = make_queue(transport)
        delay = 2 * 900 + 30
        transport.send(q, Outgoing(body="later", message_id="m1", delay_s=delay))
        waited = 0.0
        # Then every look before its time finds nothing
        while waited + 300 < delay:
            advance_clock(300)
            waited += 300
            assert transport.receive(q, max_messages=1, wait_s=0, visibility_s=VIS) == [], f"early at {waited}s"
        advance_clock(delay - waited - 2)
        assert transport.receive(q, max_messages=1, wait_s=0, visibility_s=VIS) == []
        # And it is there right after, on its first receive
        advance_clock(3)
        d = one(transport, q)
        assert (d.body, d.receive_count) == ("later", 1)

    def test_higher_priorities_are_received_first_and_the_oldest_first_within_one(
            self, transport: Transport, advance_clock: Advance) -> None:
        q = make_queue(transport, priority_bands=(5, 9))
        sent = [("a", 0), ("b", 9), ("c", 5), ("d", 0), ("e", 9), ("f", 7)]
        for body, prio in sent:
            transport.send(q, Outgoing(body=body, message_id=body, priority=prio))
            advance_clock(0.01)
        got = []
        while batch := transport.receive(q, max_messages=1, wait_s=0, visibility_s=VIS):
            got += [d.body for d in batch]
        # SQS keeps a queue per band (7 goes to band 5) and orders none within one
        band = {b: (9 if p >= 9 else 5 if p >= 5 else 0) for b, p in sent}
        assert [band[b] for b in got] == [9, 9, 5, 5, 0, 0]
        if self.orders_within_priority:
            assert got == ["b", "e", "f", "c", "a", "d"]

    def test_dead_letter_keeps_the_body_and_the_reason(self, transport: Transport) -> None:
        q = make_queue(transport)
        transport.send(q, Outgoing(body="not json", message_id="bad"))
        d = one(transport, q)
        transport.dead_letter(d, "malformed message: not JSON")
        transport.dead_letter(d, "malformed message: not JSON")  # idempotent
        assert transport.depth(q).total == 0
        dead = transport.peek(f"{q}-dlq", 10)
        assert [(x.body, x.attributes["dead_letter_reason"]) for x in dead] == [("not json", "malformed message: not JSON")]

    def test_a_second_dead_lettering_records_the_new_reason(self, transport: Transport) -> None:
        # a message redriven from a DLQ still carries its old reason; failing again replaces it
        q = make_queue(transport)
        transport.send(q, Outgoing(body="b", attributes={"dead_letter_reason": "old", "source_queue": "elsewhere",
                                                         "tenant": "t1"}))
        transport.dead_letter(one(transport, q), "new")
        [dead] = transport.peek(f"{q}-dlq", 10)
        assert dead.attributes["dead_letter_reason"] == "new" and dead.attributes["source_queue"] == q
        assert dead.attributes["tenant"] == "t1"

    def test_depth_counts_visible_in_flight_and_delayed(self, transport: Transport) -> None:
        q = make_queue(transport)
        transport.send_batch(q, [Outgoing(body=str(i)) for i in range(3)])
        transport.send(q, Outgoing(body="later", delay_s=60))
        one(transport, q)
        depth = transport.depth(q)
        assert (depth.visible, depth.in_flight, depth.delayed) == (2, 1, 1)

    def test_receive_respects_max_messages_and_leases_each_once(self, transport: Transport) -> None:
        q = make_queue(transport)
        transport.send_batch(q, [Outgoing(body=str(i)) for i in range(7)])
        a = transport.receive(q, max_messages=5, wait_s=0, visibility_s=VIS)
        b = transport.receive(q, max_messages=5, wait_s=0, visibility_s=VIS)
        assert len(a) == 5 and len(b) == 2
        assert sorted(d.body for d in a + b) == [str(i) for i in range(7)]

    def test_concurrent_receivers_never_share_a_message(self, transport: Transport) -> None:
        if not self.exclusive_concurrent_receive:
            pytest.skip("this backend's emulator may hand one message to two concurrent receivers")
        q = make_queue(transport)
        transport.send_batch(q, [Outgoing(body=str(i)) for i in range(40)])
        got: list[str] = []
        lock = threading.Lock()

        def drain() -> None:
            while True:
                ds = transport.receive(q, max_messages=3, wait_s=0, visibility_s=VIS)
                if not ds:
                    return
                with lock:
                    got.extend(d.body for d in ds)

        threads = [threading.Thread(target=drain) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got, key=int) == [str(i) for i in range(40)]

    def test_oversize_bodies_are_refused(self, transport: Transport) -> None:
        q = make_queue(transport)
        with pytest.raises(BodyTooLarge):
            transport.send(q, Outgoing(body="x" * (transport.max_body_bytes + 1)))

    def test_ensure_queue_is_idempotent_and_listed(self, transport: Transport) -> None:
        q = make_queue(transport)
        transport.ensure_queue(QueueSpec(q, visibility_timeout_s=VIS, dead_letter=f"{q}-dlq"))
        assert q in transport.queues()


class TopicContract:
    def test_publish_fans_out_to_every_subscription(self, transport: Transport, topic: Topic) -> None:
        t, a, b = qname("t"), make_queue(transport), make_queue(transport)
        topic.ensure_topic(t)
        topic.subscribe(t, a, raw=True)
        topic.subscribe(t, b, raw=False)
        topic.subscribe(t, b, raw=False)  # idempotent: still one copy per publish
        env = Envelope(task="x", job_id="j1", payload={"n": 1})
        topic.publish(t, env.to_json(), message_id=env.id)
        raw_copy = one(transport, a)
        assert raw_copy.body == env.to_json()
        wrapped = one(transport, b)
        assert json.loads(wrapped.body)["Type"] == "Notification"
        assert Codec().decode(wrapped.body) == env  # the codec unwraps what the topic wrapped
        assert transport.receive(b, max_messages=10, wait_s=0, visibility_s=VIS) == []

    def test_publish_batch_delivers_every_message_with_its_id_to_every_subscription(
            self, transport: Transport, topic: Topic) -> None:
        t, a, b = qname("t"), make_queue(transport), make_queue(transport)
        topic.ensure_topic(t)
        topic.subscribe(t, a, raw=True)
        topic.subscribe(t, b, raw=False)
        envs = [Envelope(task="x", job_id=f"j{i}", payload={"n": i}) for i in range(13)]  # more than one batch
        topic.publish_batch(t, [Outgoing(body=e.to_json(), message_id=e.id, group_id=e.job_id) for e in envs])
        for q in (a, b):
            got = []
            while batch := transport.receive(q, max_messages=10, wait_s=0, visibility_s=VIS):
                got += batch
            assert sorted(Codec().decode(d.body).id for d in got) == sorted(e.id for e in envs)
            if q == a:  # a raw copy also carries the id as the delivery's message id
                assert sorted(d.message_id for d in got) == sorted(e.id for e in envs)

    def test_publishing_without_subscribers_is_not_an_error(self, topic: Topic) -> None:
        t = qname("t")
        topic.ensure_topic(t)
        topic.publish(t, "{}", message_id="m")


class StatusStoreContract:
    def test_create_is_idempotent(self, store: StatusStore) -> None:
        _rec, created = store.create("j1", user_id="u1", fields={"n": 1})
        again, created_again = store.create("j1", user_id="other")
        assert created and not created_again
        assert again.user_id == "u1" and again.status == JobStatus.PENDING

    def test_begin_moves_pending_to_running_and_commit_completes(self, store: StatusStore) -> None:
        store.create("j1")
        rec = records.begin_step(store, "j1", stage="s", message_id="m", claim="c1", attempt=1)
        assert rec.status == JobStatus.RUNNING
        out = OutMessage(kind="queue", target="next", id="m2", body="{}")
        rec = records.commit_step(store, "j1", stage="s", message_id="m", claim="c1", status=JobStatus.COMPLETED,
                                fields={"x": 1.5, "nested": {"a": [1, 2]}}, outbox=[out])
        got = store.get("j1")
        assert got is not None and got == rec
        assert got.status == JobStatus.COMPLETED and got.fields == {"x": 1.5, "nested": {"a": [1, 2]}}
        assert got.steps["s"].state == "committed" and got.steps["s"].outbox == [out]
        assert [h.to_status for h in got.history] == [JobStatus.PENDING, JobStatus.RUNNING, JobStatus.COMPLETED]

    def test_first_committer_wins(self, store: StatusStore) -> None:
        store.create("j1")
        records.begin_step(store, "j1", stage="s", message_id="m", claim="c1", attempt=1)
        records.commit_step(store, "j1", stage="s", message_id="m", claim="c1", status=None, fields={"v": 1}, outbox=[])
        with pytest.raises(ConflictError) as err:
            records.commit_step(store, "j1", stage="s", message_id="m", claim="c1", status=None, fields={"v": 2}, outbox=[])
        assert err.value.current is not None and err.value.current.fields["v"] == 1

    def test_a_replaced_claim_cannot_commit_or_fail(self, store: StatusStore) -> None:
        store.create("j1")
        records.begin_step(store, "j1", stage="s", message_id="m", claim="old", attempt=1)
        records.begin_step(store, "j1", stage="s", message_id="m", claim="new", attempt=2)
        with pytest.raises(ConflictError):
            records.commit_step(store, "j1", stage="s", message_id="m", claim="old", status=None, fields={}, outbox=[])
        with pytest.raises(ConflictError):
            store.fail("j1", stage="s", message_id="m", claim="old", reason="x", dead_letter=False)
        with pytest.raises(ConflictError):  # an older copy cannot take the step back either
            records.begin_step(store, "j1", stage="s", message_id="m", claim="older", attempt=1)
        records.commit_step(store, "j1", stage="s", message_id="m", claim="new", status=None, fields={}, outbox=[])

    def test_status_never_goes_backwards(self, store: StatusStore) -> None:
        store.create("j1")
        records.begin_step(store, "j1", stage="s", message_id="m", claim="c", attempt=1)
        with pytest.raises(InvalidTransition):
            records.commit_step(store, "j1", stage="s", message_id="m", claim="c", status=JobStatus.PENDING, fields={}, outbox=[])
        records.commit_step(store, "j1", stage="s", message_id="m", claim="c", status=JobStatus.COMPLETED, fields={}, outbox=[])
        # a post-completion stage that fails leaves the job COMPLETED
        records.begin_step(store, "j1", stage="notify", message_id="n", claim="c2", attempt=1)
        rec = store.fail("j1", stage="notify", message_id="n", claim="c2", reason="smtp down", dead_letter=True)
        assert rec.status == JobStatus.COMPLETED
        assert rec.steps["notify"].state == "failed" and rec.history[-1].event == "step_failed"

    def test_a_failed_job_refuses_new_steps(self, store: StatusStore) -> None:
        store.create("j1")
        records.begin_step(store, "j1", stage="s", message_id="m", claim="c", attempt=1)
        rec = store.fail("j1", stage="s", message_id="m", claim="c", reason="input missing", dead_letter=False)
        assert rec.status == JobStatus.FAILED and rec.history[-1].reason == "input missing"
        with pytest.raises(ConflictError):
            records.begin_step(store, "j1", stage="t", message_id="m2", claim="c", attempt=1)

    def test_reset_and_update_fields(self, store: StatusStore) -> None:
        store.create("j1")
        records.begin_step(store, "j1", stage="s", message_id="m", claim="c", attempt=1)
        store.fail("j1", stage="s", message_id="m", claim="c", reason="boom", dead_letter=True)
        rec = store.reset("j1", stage="s", reason="redrive")
        assert rec.status == JobStatus.PENDING and "s" not in rec.steps
        assert store.update_fields("j1", {"k": "v"}).fields["k"] == "v"

    def test_delete_removes_a_job_only_at_the_version_it_was_read(self, store: StatusStore) -> None:
        store.create("j1")
        read = store.get("j1")
        assert read is not None
        records.begin_step(store, "j1", stage="s", message_id="m", claim="c", attempt=1)  # written since
        assert store.delete("j1", version=read.version) is False and store.get("j1") is not None
        now = store.get("j1")
        assert now is not None and store.delete("j1", version=now.version) is True
        assert store.get("j1") is None and store.delete("j1", version=now.version) is False

    def test_a_failed_attempt_is_kept_on_the_step_and_in_the_history(self, store: StatusStore) -> None:
        store.create("j1")
        records.begin_step(store, "j1", stage="s", message_id="m", claim="c", attempt=1)
        error = {"type": "RuntimeError", "message": "boom", "traceback": "Traceback...", "attempt": 1, "at": 1.0}
        rec = store.retried("j1", stage="s", message_id="m", claim="c", error=error, delay_s=2.0)
        assert rec.steps["s"].error is not None and rec.steps["s"].error.message == "boom"
        assert rec.history[-1].event == "retried" and "RuntimeError: boom" in (rec.history[-1].reason or "")
        with pytest.raises(ConflictError):  # a replaced claim records nothing
            store.retried("j1", stage="s", message_id="m", claim="other", error=error, delay_s=2.0)
        rec = store.note("j1", event="released", stage="s", message_id="m", reason="stopping")
        assert rec.history[-1].event == "released" and rec.status == JobStatus.RUNNING
        again = store.get("j1")
        assert again is not None and again.steps["s"].error is not None and again.steps["s"].error.type == "RuntimeError"

    def test_query_by_user_and_status(self, store: StatusStore) -> None:
        for i in range(4):
            store.create(f"j{i}", user_id="alice" if i % 2 == 0 else "bob")
        records.begin_step(store, "j0", stage="s", message_id="m", claim="c", attempt=1)
        assert [r.job_id for r in store.query(user_id="alice")] == ["j0", "j2"]
        assert [r.job_id for r in store.query(status=JobStatus.RUNNING)] == ["j0"]
        assert [r.job_id for r in store.query(user_id="bob", status=JobStatus.PENDING)] == ["j1", "j3"]
        # the status by its name, as a dashboard or a script has it
        assert [r.job_id for r in store.query(status="RUNNING")] == ["j0"]  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="BOGUS"):
            store.query(status="BOGUS")  # type: ignore[arg-type]

    def test_query_reads_the_latest_jobs_since_a_time(self, store: StatusStore) -> None:
        clock = store.clock  # type: ignore[attr-defined]
        for i in range(6):  # j0..j5 a second apart; j2 and j3 at the same time (then by id)
            store.create(f"j{i}", user_id="alice" if i % 2 == 0 else "bob")
            if i != 2:
                clock.advance(1.0)
        t0 = store.get("j0").created_at  # type: ignore[union-attr]
        ids = lambda recs: [r.job_id for r in recs]  # noqa: E731
        assert ids(store.query(limit=3)) == ["j3", "j4", "j5"]  # the latest, oldest first
        assert ids(store.query(limit=4)) == ["j2", "j3", "j4", "j5"]
        assert ids(store.query(limit=100)) == ids(store.query()) == [f"j{i}" for i in range(6)]
        assert store.query(limit=0) == [] and store.query(limit=-1) == []
        assert ids(store.query(since=t0 + 2)) == ["j2", "j3", "j4", "j5"]
        assert ids(store.query(user_id="alice", limit=2)) == ["j2", "j4"]
        assert ids(store.query(status=JobStatus.PENDING, since=t0 + 3, limit=1)) == ["j5"]
        assert ids(store.query(since=t0 + 100)) == [] and ids(store.query(limit=2**70)) == ids(store.query())

    @pytest.mark.parametrize("bad", ["a\x00b", "\ud800", "x" * 600, "", " "])
    def test_a_job_or_user_no_store_can_hold_is_not_found(self, store: StatusStore, bad: str) -> None:
        # (a dashboard's URL, an API call: not an error of the database's, a job that is not there)
        store.create("j1", user_id="alice")
        assert store.get(bad) is None
        assert store.get_docs([bad, "j1"]).keys() == {"j1"}
        assert store.query(user_id=bad) == []
        with pytest.raises(JobNotFound):
            store.cancel(bad, reason="r")

    def test_concurrent_committers_exactly_one_wins(self, store: StatusStore) -> None:
        store.create("j1")
        records.begin_step(store, "j1", stage="s", message_id="m", claim="c", attempt=1)
        wins: list[int] = []
        losses: list[int] = []

        def commit(i: int) -> None:
            try:
                records.commit_step(store, "j1", stage="s", message_id="m", claim="c", status=None, fields={"by": i}, outbox=[])
                wins.append(i)
            except ConflictError:
                losses.append(i)

        threads = [threading.Thread(target=commit, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1 and len(losses) == 5
        rec = store.get("j1")
        assert rec is not None and rec.fields["by"] == wins[0] and rec.commits("s") == 1


class BatchStoreContract:
    """The batched store operations behave as their one-job counterparts, item by item."""

    def test_get_many_returns_the_existing_jobs(self, store: StatusStore) -> None:
        for i in range(3):
            store.create(f"j{i}")
        got = records.get_many(store, ["j0", "j2", "missing", "j0"])
        assert sorted(got) == ["j0", "j2"]

    def test_batched_begin_and_commit_judge_each_job_on_its_own(self, store: StatusStore) -> None:
        from orchestrator.status import BeginItem, CommitItem

        for i in range(4):
            store.create(f"j{i}")
        records.begin_step(store, "j3", stage="s", message_id="m", claim="other", attempt=5)  # a newer holder
        known = records.get_many(store, [f"j{i}" for i in range(4)])
        begun = records.begin_steps(store, [BeginItem(f"j{i}", "s", "m", f"c{i}", 1) for i in range(4)], known=known)
        assert [type(r).__name__ for r in begun] == ["JobRecord", "JobRecord", "JobRecord", "ConflictError"]
        known = records.get_many(store, [f"j{i}" for i in range(3)])
        records.commit_step(store, "j1", stage="s", message_id="m", claim="c1", status=None, fields={"by": "single"}, outbox=[])
        done = records.commit_steps(store, [CommitItem(f"j{i}", "s", "m", f"c{i}", JobStatus.COMPLETED, {"by": "batch"}, [])
                                   for i in range(3)], known=known)
        assert [type(r).__name__ for r in done] == ["JobRecord", "ConflictError", "JobRecord"]
        j1 = store.get("j1")
        assert j1 is not None and j1.fields["by"] == "single" and j1.commits("s") == 1
        j2 = store.get("j2")
        assert j2 is not None and j2.status == JobStatus.COMPLETED and j2.fields["by"] == "batch"

    def test_a_batch_write_whose_record_moved_is_judged_again_and_keeps_both_writes(self, store: StatusStore) -> None:
        from orchestrator.status import CommitItem

        for i in range(4):
            store.create(f"j{i}")
        known = records.get_many(store, [f"j{i}" for i in range(4)])
        store.update_fields("j1", {"moved": True})  # j1's known record is now stale; the others are not
        store.update_fields("j3", {"moved": True})
        done = records.commit_steps(store, [CommitItem(f"j{i}", "s", f"m{i}", None, JobStatus.COMPLETED, {"by": "batch"}, [])
                                   for i in range(4)], known=known)
        assert [type(r).__name__ for r in done] == ["JobRecord"] * 4
        for i in range(4):
            j = store.get(f"j{i}")
            assert j is not None and j.status == JobStatus.COMPLETED and j.fields["by"] == "batch"
            assert j.commits("s") == 1 and j.version == done[i].version  # type: ignore[union-attr]
            assert j.fields.get("moved", False) == (i in (1, 3))

    def test_prepared_commits_apply_each_on_its_own_and_a_moved_record_is_judged_again(
            self, store: StatusStore) -> None:
        from orchestrator.status import CommitItem

        for i in range(3):
            store.create(f"j{i}")
        known = store.get_docs(["j0", "j1", "j2"])
        writes = store.prepare_commits([CommitItem(f"j{i}", "s", "m", None, JobStatus.COMPLETED, {"i": i}, [])
                                        for i in range(3)], known=known)
        assert store.get_docs(["j0", "j1", "j2"]) == known  # preparing wrote nothing
        # between preparing and applying: j1's step is committed by someone else, j2 gains a field
        records.commit_step(store, "j1", stage="s", message_id="m", claim=None, status=None, fields={}, outbox=[])
        store.update_fields("j2", {"other": "writer"})
        done = store.apply(writes)
        assert [type(r).__name__ for r in done] == ["dict", "ConflictError", "dict"]
        j2 = store.get("j2")
        assert j2 is not None and j2.status == JobStatus.COMPLETED and j2.fields == {"other": "writer", "i": 2}

    def test_a_lazy_commit_records_the_step_and_passes_through_running(self, store: StatusStore) -> None:
        store.create("j")
        rec = records.commit_step(store, "j", stage="s", message_id="m", claim=None, status=JobStatus.COMPLETED,
                                fields={}, outbox=[])
        assert rec.status == JobStatus.COMPLETED and rec.steps["s"].state == "committed"
        assert [h.to_status for h in rec.history] == [JobStatus.PENDING, JobStatus.RUNNING, JobStatus.COMPLETED]
        with pytest.raises(ConflictError):
            records.commit_step(store, "j", stage="s", message_id="m", claim=None, status=None, fields={}, outbox=[])


class UnitContract:
    """A backend's unit of work (``with backend.unit() as u``): store and queue writes made in
    it are one transaction where ``backend.transactional`` (SQLite, PostgreSQL), and apply in
    order elsewhere (AWS, memory). Subclasses supply ``backend`` and ``transactional``."""

    transactional: bool

    def _job_and_message(self, backend: Backend) -> tuple[str, Delivery]:
        backend.transport.ensure_queue(QueueSpec("unit-in"))
        backend.transport.ensure_queue(QueueSpec("unit-out"))
        backend.store.create("u1")
        backend.transport.send("unit-in", Outgoing(body="in"))
        [d] = backend.transport.receive("unit-in", max_messages=1, wait_s=0, visibility_s=VIS)
        return "u1", d

    def _commit_emit_ack(self, backend: Backend, job_id: str, d: Delivery, crash: str | None = None) -> None:
        from orchestrator.status import CommitItem

        with backend.unit():
            backend.store.commit_docs([CommitItem(job_id, "s", "m", None, JobStatus.COMPLETED, {"x": 1}, [])],
                                      known=backend.store.get_docs([job_id]))
            if crash == "after_commit":
                raise RuntimeError(crash)
            backend.transport.send("unit-out", Outgoing(body="out"))
            if crash == "after_emit":
                raise RuntimeError(crash)
            backend.transport.ack(d)

    def test_the_backend_says_whether_a_unit_is_one_transaction(self, backend: Backend) -> None:
        assert backend.transactional is self.transactional
        with backend.unit() as u:
            assert u.atomic is self.transactional

    def test_a_unit_that_ends_leaves_every_write_made_in_it(self, backend: Backend) -> None:
        job_id, d = self._job_and_message(backend)
        self._commit_emit_ack(backend, job_id, d)
        job = backend.store.get(job_id)
        assert job is not None and job.status == JobStatus.COMPLETED and job.fields == {"x": 1}
        assert [m.body for m in backend.transport.receive("unit-out", max_messages=10, wait_s=0, visibility_s=VIS)
                ] == ["out"]
        assert backend.transport.depth("unit-in").visible + backend.transport.depth("unit-in").in_flight == 0

    @pytest.mark.parametrize("crash", ["after_commit", "after_emit"])
    def test_a_unit_that_raises_leaves_all_or_the_writes_before_it(self, backend: Backend, crash: str) -> None:
        job_id, d = self._job_and_message(backend)
        before = backend.store.get(job_id)
        with pytest.raises(RuntimeError):
            self._commit_emit_ack(backend, job_id, d, crash=crash)
        job = backend.store.get(job_id)
        sent = backend.transport.receive("unit-out", max_messages=10, wait_s=0, visibility_s=VIS)
        assert job is not None
        if self.transactional:  # nothing: the job as it was, nothing sent, the message still held
            assert job == before and sent == []
        else:  # what came before the raise, in order, and nothing after it
            assert job.status == JobStatus.COMPLETED
            assert [m.body for m in sent] == ([] if crash == "after_commit" else ["out"])
        assert backend.transport.depth("unit-in").in_flight == 1  # never acked

    def test_a_batch_commit_that_loses_a_swap_keeps_the_writes_made_before_it_in_the_unit(
            self, backend: Backend) -> None:
        from orchestrator.status import CommitItem

        # Given three jobs read, then two of them written by someone else: j1's step
        # committed (its commit must lose), j2 given a field (its commit is judged again)
        backend.transport.ensure_queue(QueueSpec("unit-out"))
        for i in range(3):
            backend.store.create(f"j{i}")
        known = backend.store.get_docs(["j0", "j1", "j2"])
        records.commit_step(backend.store, "j1", stage="s", message_id="m", claim=None, status=None, fields={},
                            outbox=[])
        backend.store.update_fields("j2", {"other": "writer"})
        # When one unit sends a message, then commits the batch
        with backend.unit():
            backend.transport.send("unit-out", Outgoing(body="before"))
            done = backend.store.commit_docs([CommitItem(f"j{i}", "s", "m", None, JobStatus.COMPLETED, {"i": i}, [])
                                              for i in range(3)], known=known)
        # Then j0 and j2 are committed, j1's commit lost, and the message sent first is there
        assert [type(r).__name__ for r in done] == ["dict", "ConflictError", "dict"]
        j0, j1, j2 = (backend.store.get(f"j{i}") for i in range(3))
        assert j0 is not None and j0.status == JobStatus.COMPLETED and j0.fields == {"i": 0}
        assert j1 is not None and j1.status == JobStatus.RUNNING and j1.commits("s") == 1 and j1.fields == {}
        assert j2 is not None and j2.status == JobStatus.COMPLETED and j2.fields == {"other": "writer", "i": 2}
        sent = backend.transport.receive("unit-out", max_messages=10, wait_s=0, visibility_s=VIS)
        assert [m.body for m in sent] == ["before"]

    def test_a_unit_inside_a_unit_joins_it(self, backend: Backend) -> None:
        job_id, _ = self._job_and_message(backend)
        with pytest.raises(RuntimeError), backend.unit():
            with backend.unit():
                backend.store.update_fields(job_id, {"inner": True})
            job = backend.store.get(job_id)  # a read inside the unit sees its writes
            assert job is not None and job.fields == {"inner": True}
            raise RuntimeError("after the inner unit ended")
        job = backend.store.get(job_id)
        assert job is not None and job.fields == ({} if self.transactional else {"inner": True})
