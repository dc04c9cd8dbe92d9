"""``orchestrator web``: the dashboard for any pipeline, through its API and in headless Chromium.

Screenshots go to ``ORCHESTRATOR_WEB_SCREENSHOTS`` (the README's come from here) or the test's
tmp dir.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("argon2")
pytest.importorskip("fastapi")

from browser import chromium, served
from fastapi.testclient import TestClient

from orchestrator import JobStatus, Pipeline, Result
from orchestrator.backends import Backend, sqlite_backend
from orchestrator.controllers.worker import Worker
from orchestrator.web.app import COOKIE, create_app
from orchestrator.web.auth import hash_password

OPERATOR_PW, VIEWER_PW = "operator-secret", "viewer-secret"
HASHES = {"operator": hash_password(OPERATOR_PW), "viewer": hash_password(VIEWER_PW)}


def shop() -> Pipeline:
    p = Pipeline("shop")

    @p.stage("charge", source="orders", emit_to="ship", max_receives=2, retry_base_s=0, retry_max_s=0, wait_s=0.05)
    def charge(ctx, msg):  # type: ignore[no-untyped-def]
        if msg.payload.get("card") == "stolen":
            raise_card_declined()
        return Result(status=JobStatus.RUNNING, fields={"charged": msg.payload["amount"]}, emit=[{"ok": True}])

    @p.stage("ship", source="ship", wait_s=0.05)
    def ship(ctx, msg):  # type: ignore[no-untyped-def]
        time.sleep(0.002)
        return Result(status=JobStatus.COMPLETED)

    return p


def raise_card_declined() -> None:
    raise RuntimeError("card declined by the bank")


def run(backend: Backend, p: Pipeline) -> None:
    for stage in ("charge", "ship"):
        w = Worker(p, stage, backend, wait_s=0.05)
        w.run(until_idle=True)


@pytest.fixture
def shop_backend(tmp_path: Path) -> Iterator[tuple[Pipeline, Backend]]:
    backend = sqlite_backend(tmp_path / "shop.db")
    p = shop()
    p.setup(backend)
    for i in range(6):
        p.submit(backend, job_id=f"order-{i}", payload={"amount": 10 + i, "card": "stolen" if i == 3 else "ok"},
                 queue="orders", user_id="ann")
    run(backend, p)
    yield p, backend
    backend.close()


def client(p: Pipeline, backend: Backend) -> TestClient:
    return TestClient(create_app(p, backend, hashes=HASHES), follow_redirects=False)


def sign_in(c: TestClient, password: str) -> str:
    r = c.post("/signin", data={"password": password})
    assert r.status_code == 303 and r.headers["location"] == "/"
    sid = r.cookies.get(COOKIE)
    assert sid
    return sid


def csrf_of(c: TestClient) -> str:
    import re

    page = c.get("/").text
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m
    return m.group(1)


def test_sign_in_roles_and_a_sign_out_that_ends_the_session(shop_backend: tuple[Pipeline, Backend]) -> None:
    p, backend = shop_backend
    c = client(p, backend)
    assert c.get("/").status_code == 303 and c.get("/api/stages").status_code == 401
    assert c.post("/signin", data={"password": "guess"}).status_code == 401
    sid = sign_in(c, VIEWER_PW)
    assert c.get("/api/stages").status_code == 200
    # read-only: no writes, whatever the token
    token = csrf_of(c)
    assert c.post("/api/dead-letters/orders-dlq/redrive?dry_run=false", headers={"x-csrf-token": token}).status_code == 403
    assert c.post("/api/jobs/order-3/retry", headers={"x-csrf-token": token}).status_code == 403
    # signing out ends the session on the server: the old cookie no longer works
    assert c.post("/signout", data={"csrf": token}).status_code == 303
    other = client(p, backend)
    other.cookies.set(COOKIE, sid)
    assert other.get("/api/stages").status_code == 401


def test_pages_carry_security_headers_and_no_open_redirect(shop_backend: tuple[Pipeline, Backend]) -> None:
    p, backend = shop_backend
    c = client(p, backend)
    r = c.get("/signin")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "script-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    r = c.post("/signin?next=https://evil.example/", data={"password": OPERATOR_PW})
    assert r.headers["location"] == "/"
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()


def test_the_api_shows_stages_jobs_attempts_and_dead_letters(shop_backend: tuple[Pipeline, Backend]) -> None:
    p, backend = shop_backend
    c = client(p, backend)
    sign_in(c, OPERATOR_PW)
    stages = {s["stage"]: s for s in c.get("/api/stages").json()}
    assert sum(stages["charge"]["committed"]) == 5 and sum(stages["charge"]["failed"]) == 1
    assert stages["charge"]["dead_letters"] == 1 and sum(stages["ship"]["committed"]) == 5
    failed = c.get("/api/jobs", params={"status": "FAILED"}).json()
    assert [j["job_id"] for j in failed] == ["order-3"]
    assert [j["job_id"] for j in c.get("/api/jobs", params={"job_id": "order-1"}).json()] == ["order-1"]
    assert len(c.get("/api/jobs", params={"stage": "ship"}).json()) == 5
    job = c.get("/api/jobs/order-3").json()
    assert "raise_card_declined" in job["steps"]["charge"]["error"]["traceback"]
    assert [h["event"] for h in job["history"]].count("retried") == 1
    page = c.get("/jobs/order-3").text
    assert "card declined by the bank" in page and "Traceback (most recent call last)" in page
    dead = c.get("/api/dead-letters/orders-dlq").json()
    assert len(dead) == 1 and "raise_card_declined" in dead[0]["error"]["traceback"]
    assert c.get("/api/dead-letters/orders").status_code == 404  # a live queue is no dead-letter queue
    spec = c.get("/openapi.json").json()
    assert "/api/jobs/{job_id}/retry" in spec["paths"] and "/api/dead-letters/{queue}/redrive" in spec["paths"]


def test_redrive_shows_a_dry_run_first_and_retry_and_cancel_need_the_token(
        shop_backend: tuple[Pipeline, Backend]) -> None:
    p, backend = shop_backend
    c = client(p, backend)
    sign_in(c, OPERATOR_PW)
    token = csrf_of(c)
    assert c.post("/api/dead-letters/orders-dlq/redrive").status_code == 403  # no token
    dry = c.post("/api/dead-letters/orders-dlq/redrive", headers={"x-csrf-token": token}).json()
    assert dry["dry_run"] is True and len(dry["would_redrive"]) == 1
    assert backend.transport.depth("orders-dlq").total == 1  # nothing moved
    done = c.post("/api/dead-letters/orders-dlq/redrive?dry_run=false", headers={"x-csrf-token": token}).json()
    assert len(done["redriven"]) == 1 and backend.transport.depth("orders-dlq").total == 0
    job = backend.store.get("order-3")
    assert job is not None and job.status == JobStatus.PENDING
    assert c.post("/api/jobs/order-3/cancel", headers={"x-csrf-token": token}).json()["status"] == "CANCELLED"
    assert c.post("/api/jobs/order-3/cancel", headers={"x-csrf-token": "wrong"}).status_code == 403
    assert c.post("/api/jobs/order-0/retry", headers={"x-csrf-token": token}).status_code == 409  # COMPLETED


# -- in a browser ------------------------------------------------------------------------------
@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium(1280, 900) as driver:
        yield driver


def test_in_chromium_find_a_failed_job_see_its_traceback_redrive_and_watch_the_chart_move(
        shop_backend: tuple[Pipeline, Backend], browser: Any, tmp_path: Path) -> None:

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    p, backend = shop_backend
    shots = Path(os.environ.get("ORCHESTRATOR_WEB_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    b = browser
    with served(create_app(p, backend, hashes=HASHES)) as url:
        def sign_in_as(password: str) -> None:
            b.delete_all_cookies()
            b.get(f"{url}/signin")
            b.find_element(By.ID, "password").send_keys(password)
            b.find_element(By.ID, "signin").click()
            b.find_element(By.ID, "role")  # signed in and landed: the next navigation cannot race this one

        # a read-only user sees the dead letter but no redrive button
        sign_in_as(VIEWER_PW)
        assert b.find_element(By.ID, "role").text == "viewer"
        b.get(f"{url}/dead-letters/orders-dlq")
        assert not b.find_elements(By.ID, "redrive")
        # an operator finds the failed job and reads the traceback of its attempts
        sign_in_as(OPERATOR_PW)
        b.get(f"{url}/jobs")
        Select(b.find_element(By.ID, "q-status")).select_by_value("FAILED")
        b.find_element(By.ID, "find").click()
        deadline = time.monotonic() + 10
        while "status=FAILED" not in b.current_url and time.monotonic() < deadline:
            time.sleep(0.05)  # the search's page, not the one before it
        links = b.find_elements(By.CLASS_NAME, "job-link")
        assert [a.text for a in links] == ["order-3"]
        links[0].click()
        assert b.find_element(By.ID, "status").text == "FAILED"
        assert "raise_card_declined" in b.find_element(By.ID, "traceback-charge").text
        assert len(b.find_elements(By.CLASS_NAME, "event-retried")) == 1
        # each attempt's own traceback, behind its event
        attempts = b.find_elements(By.CSS_SELECTOR, "details.attempt-traceback")
        assert len(attempts) == 2  # the retried attempt and the last one
        for d in attempts:
            d.find_element(By.TAG_NAME, "summary").click()
            assert "raise_card_declined" in d.find_element(By.TAG_NAME, "pre").text
        b.save_screenshot(str(shots / "dashboard-job.png"))
        # redrives from the dead-letter queue after a dry run
        b.get(f"{url}/dead-letters/orders-dlq")
        b.find_element(By.ID, "redrive").click()
        assert "would send 1 message" in b.find_element(By.ID, "dry-run").text
        b.save_screenshot(str(shots / "dashboard-redrive.png"))
        b.find_element(By.ID, "confirm-redrive").click()
        assert "Redriven 1" in b.find_element(By.ID, "redriven").text
        # and sees the throughput chart move while a worker runs
        b.get(url)
        before = int(b.find_element(By.CSS_SELECTOR, "#stage-charge .committed-total").text)
        for i in range(20):
            p.submit(backend, job_id=f"more-{i}", payload={"amount": 1, "card": "ok"}, queue="orders")
        worker = Worker(p, "charge", backend, wait_s=0.05)
        worker.start()
        try:
            deadline = time.monotonic() + 30
            after = before
            while after < before + 20 and time.monotonic() < deadline:
                time.sleep(1)
                b.get(url)
                after = int(b.find_element(By.CSS_SELECTOR, "#stage-charge .committed-total").text)
            assert after >= before + 20, (before, after)
        finally:
            worker.stop(timeout=10)
        b.save_screenshot(str(shots / "dashboard-stages.png"))
        # signing out invalidates the old cookie
        old = b.get_cookie(COOKIE)["value"]
        b.find_element(By.ID, "signout").click()
        b.add_cookie({"name": COOKIE, "value": old})
        b.get(f"{url}/jobs")
        assert "/signin" in b.current_url


def test_a_search_reads_the_latest_page_and_finds_by_stage_among_the_latest(tmp_path: Path) -> None:
    from orchestrator.clock import SimClock
    from orchestrator.controllers.submit import submit_many
    from orchestrator.web import views

    clock = SimClock()
    backend = sqlite_backend(tmp_path / "many.db", clock=clock)
    p = shop()
    p.setup(backend)
    for start in range(0, 300, 100):
        submit_many(backend, [(f"o{i:03}", {"amount": 1, "card": "ok"}, "ann") for i in range(start, start + 100)],
                    queue="orders")
        clock.advance(60)
    reads: list[dict[str, Any]] = []
    query = backend.store.query

    def counted(**kw: Any) -> Any:
        reads.append(kw)
        return query(**kw)

    backend.store.query = counted  # type: ignore[method-assign]
    page = views.search(backend, limit=5)
    assert [r.job_id for r in page] == ["o299", "o298", "o297", "o296", "o295"]  # the latest first
    assert reads[-1]["limit"] == 5  # the store read the page, not the 300
    # a job of the first batch that moved on to a later stage is found by that stage
    run(backend, p)
    assert {r.job_id for r in views.search(backend, stage="ship", limit=500)} == {f"o{i:03}" for i in range(300)}
    assert [r.job_id for r in views.search(backend, since=clock.now() - 90, limit=2)] == ["o299", "o298"]
    rows = views.overview(p, backend)
    assert reads[-1]["limit"] == views.CHART_JOBS and sum(rows[0].committed) == 300
    backend.close()
