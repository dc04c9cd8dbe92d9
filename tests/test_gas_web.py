"""The GAS web front end in a real headless Chromium (Debian's chromium + chromium-driver):
sign in, upload, watch the job complete while workers run, download, isolation between users,
the free tier's upload limit, upgrade restoring an archived result, the operators' page.

Screenshots go to ``GAS_WEB_SCREENSHOTS`` (the README's come from here) or the test's tmp dir.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser import chromium, served

from examples.gas import app
from examples.gas.config import GasConfig
from examples.gas.samples import samples_dir
from orchestrator import JobStatus, Worker
from orchestrator.web.auth import hash_password

SAMPLES = samples_dir()
OPS_PASSWORD = "operators-only"
OPS_HASHES = {"operator": hash_password(OPS_PASSWORD)}


@dataclass
class Site:
    url: str
    gas: app.Gas
    shots: Path
    workers: list[Worker]

    def run_stages(self, *stages: str) -> None:
        for stage in stages:
            w = Worker(self.gas.pipeline, stage, self.gas.backend, wait_s=0.05)
            w.start()
            self.workers.append(w)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:

    from examples.gas.web import create_app

    gas = app.open_gas(f"sqlite:///{tmp_path}/gas.db", config=GasConfig(retention_s=1.0, retry_base_s=0.1))
    app.setup(gas)
    shots = Path(os.environ.get("GAS_WEB_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with served(create_app(gas, secret="test-secret", ops_hashes=OPS_HASHES, signin="dev")) as url:
        s = Site(url, gas, shots, [])
        yield s
        for w in s.workers:
            w.stop(timeout=10)
    gas.close()


@pytest.fixture
def browser() -> Iterator[object]:
    with chromium() as driver:
        yield driver


def sign_in(b: object, site: Site, name: str, tier: str = "free") -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    b.delete_all_cookies()  # type: ignore[attr-defined]
    b.get(f"{site.url}/signin")  # type: ignore[attr-defined]
    b.find_element(By.ID, "name").send_keys(name)  # type: ignore[attr-defined]
    b.find_element(By.ID, "email").send_keys(f"{name}@example.org")  # type: ignore[attr-defined]
    Select(b.find_element(By.ID, "tier-select")).select_by_value(tier)  # type: ignore[attr-defined]
    b.find_element(By.ID, "signin").click()  # type: ignore[attr-defined]
    assert b.find_element(By.ID, "who").text == name  # type: ignore[attr-defined]


def upload(b: object, path: Path, *, accepted: bool = True) -> str:
    """Upload through the form; the new job's id (after the redirect to its page has landed:
    reading the URL before then would give the list's)."""
    from selenium.webdriver.common.by import By

    before = b.current_url  # type: ignore[attr-defined]
    b.find_element(By.ID, "file").send_keys(str(path))  # type: ignore[attr-defined]
    b.find_element(By.ID, "submit").click()  # type: ignore[attr-defined]
    if not accepted:
        wait_for(lambda: b.find_element(By.ID, "message"), what="the refusal")  # type: ignore[attr-defined]
        return ""
    wait_for(lambda: b.current_url != before and "/annotations/" in b.current_url,  # type: ignore[attr-defined]
             what="the job's page")
    wait_for(lambda: b.find_element(By.ID, "status"), what="the job's status")  # type: ignore[attr-defined]
    return str(b.current_url).rsplit("/", 1)[-1]  # type: ignore[attr-defined]


def wait_for(pred: object, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():  # type: ignore[operator]
                return
        except Exception:  # a page mid-reload
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def fetch(b: object, path: str) -> tuple[int, str]:
    """GET ``path`` from inside the page (the session's cookie goes along)."""
    status, text = b.execute_async_script(  # type: ignore[attr-defined]
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(async r => done([r.status, await r.text()]));", path)
    return int(status), str(text)


def test_a_user_uploads_watches_the_job_complete_and_downloads_the_result(site: Site, browser: object) -> None:
    from selenium.webdriver.common.by import By

    b = browser
    # Given alice signed in (free) with the annotate and notify workers not yet running
    sign_in(b, site, "alice")
    b.save_screenshot(str(site.shots / "1-my-annotations.png"))  # type: ignore[attr-defined]
    # When she uploads test.vcf
    job_id = upload(b, SAMPLES / "test.vcf")
    status = b.find_element(By.ID, "status").text  # type: ignore[attr-defined]
    assert status == "PENDING"
    # and the workers start: the page follows the job to COMPLETED by itself
    site.run_stages("annotate", "notify")
    wait_for(lambda: b.find_element(By.ID, "status").text == "COMPLETED", what="COMPLETED on the page")  # type: ignore[attr-defined]
    wait_for(lambda: b.find_element(By.ID, "download"), what="the download link")  # type: ignore[attr-defined]
    b.save_screenshot(str(site.shots / "2-job-completed.png"))  # type: ignore[attr-defined]
    # Then she can download the annotated file and the log
    code, body = fetch(b, f"/api/jobs/{job_id}/result")
    assert code == 200 and "VT=" in body
    code, log = fetch(b, f"/api/jobs/{job_id}/log")
    assert code == 200 and log.strip()
    # and her list shows it
    b.get(f"{site.url}/annotations")  # type: ignore[attr-defined]
    assert job_id[:8] in b.find_element(By.ID, "jobs").text  # type: ignore[attr-defined]
    # But bob, signed in, gets 404 for her job, its page and its file
    sign_in(b, site, "bob")
    assert fetch(b, f"/api/jobs/{job_id}/result")[0] == 404
    assert fetch(b, f"/api/jobs/{job_id}")[0] == 404
    b.get(f"{site.url}/annotations/{job_id}")  # type: ignore[attr-defined]
    assert "no job" in b.find_element(By.ID, "message").text  # type: ignore[attr-defined]
    assert job_id[:8] not in fetch(b, "/api/jobs")[1]


def test_an_oversize_free_upload_is_refused_with_the_reason(site: Site, browser: object) -> None:
    from selenium.webdriver.common.by import By

    b = browser
    sign_in(b, site, "fred")
    upload(b, SAMPLES / "premium_1.vcf", accepted=False)  # 175,701 bytes: over the free tier's 153,600
    msg = b.find_element(By.ID, "message").text  # type: ignore[attr-defined]
    assert "larger than the 153,600 bytes free users may upload" in msg
    b.save_screenshot(str(site.shots / "3-oversize-refused.png"))  # type: ignore[attr-defined]
    assert site.gas.backend.store.query(user_id="fred") == []  # nothing stored, nothing queued


def test_upgrading_restores_an_archived_result(site: Site, browser: object) -> None:
    from selenium.webdriver.common.by import By

    b = browser
    # Given carol (free) whose result was archived after the retention
    sign_in(b, site, "carol")
    job_id = upload(b, SAMPLES / "free_1.vcf")
    site.run_stages("annotate", "notify", "archive", "restore")
    wait_for(lambda: b.find_element(By.ID, "archived"), timeout=60, what="the archived note")  # type: ignore[attr-defined]
    b.save_screenshot(str(site.shots / "4-archived.png"))  # type: ignore[attr-defined]
    assert fetch(b, f"/api/jobs/{job_id}/result")[0] == 404
    # When she upgrades from the page
    b.find_element(By.ID, "upgrade").click()  # type: ignore[attr-defined]
    # Then the result comes back and downloads
    wait_for(lambda: b.find_element(By.ID, "download"), timeout=60, what="the restored download link")  # type: ignore[attr-defined]
    assert b.find_element(By.ID, "tier").text == "premium"  # type: ignore[attr-defined]
    code, body = fetch(b, f"/api/jobs/{job_id}/result")
    assert code == 200 and "VT=" in body, (code, body[:300], site.gas.backend.store.get(job_id))
    rec = site.gas.backend.store.get(job_id)
    assert rec is not None and rec.status == JobStatus.COMPLETED and "restore_time" in rec.fields


def test_operators_get_the_dashboard_mounted_at_ops_and_redrive_dead_letters(site: Site, browser: object) -> None:
    from selenium.webdriver.common.by import By

    from orchestrator.base import Outgoing

    b = browser
    # Given a request the web app sent without its input key: dead-lettered with the reason
    sign_in(b, site, "dora")
    site.gas.backend.transport.send("gas_annotate", Outgoing(body='{"job_id": "broken-1", "user_id": "dora"}'))
    site.run_stages("annotate")
    wait_for(lambda: site.gas.backend.transport.depth("gas_annotate-dlq").total == 1, what="the dead letter")
    for w in site.workers:
        w.stop(timeout=10)
    # When a signed-in user without the operators' password asks for /ops, they are sent to sign in
    b.get(f"{site.url}/ops/")  # type: ignore[attr-defined]
    assert b.current_url.endswith("/ops/signin")  # type: ignore[attr-defined]
    assert fetch(b, "/ops/api/stages")[0] == 401
    status = b.execute_async_script(  # type: ignore[attr-defined]
        "const done = arguments[arguments.length - 1];"
        "fetch('/ops/api/dead-letters/gas_annotate-dlq/redrive?dry_run=false', {method: 'POST'})"
        ".then(r => done(r.status));")
    assert status in (401, 403) and site.gas.backend.transport.depth("gas_annotate-dlq").total == 1
    # and the operator signs in with it, sees every stage and the dead letter's reason
    b.find_element(By.ID, "password").send_keys(OPS_PASSWORD)  # type: ignore[attr-defined]
    b.find_element(By.ID, "signin").click()  # type: ignore[attr-defined]
    table = b.find_element(By.ID, "stages").text  # type: ignore[attr-defined]
    assert "annotate" in table and "notify" in table
    b.find_element(By.ID, "dead-annotate").click()  # type: ignore[attr-defined]
    assert "lacks required keys" in b.find_element(By.ID, "letters").text  # type: ignore[attr-defined]
    b.save_screenshot(str(site.shots / "5-operations.png"))  # type: ignore[attr-defined]
    # and redrives it after a dry run
    b.find_element(By.ID, "redrive").click()  # type: ignore[attr-defined]
    assert "would send 1 message" in b.find_element(By.ID, "dry-run").text  # type: ignore[attr-defined]
    b.find_element(By.ID, "confirm-redrive").click()  # type: ignore[attr-defined]
    # Then the message is back in its queue, and both APIs describe themselves
    wait_for(lambda: site.gas.backend.transport.depth("gas_annotate-dlq").total == 0, what="the redrive")
    assert site.gas.backend.transport.depth("gas_annotate").visible == 1
    code, spec = fetch(b, "/openapi.json")
    assert code == 200 and '"/api/jobs"' in spec
    code, spec = fetch(b, "/ops/openapi.json")
    assert code == 200 and '"/api/dead-letters/{queue}/redrive"' in spec


def test_downloads_on_aws_are_presigned_s3_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """On aws:// the file is not streamed through the web app: the browser is sent to S3."""
    from fastapi.testclient import TestClient
    from moto import mock_aws

    from examples.gas.web import create_app

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        gas = app.open_gas("aws://?region=us-east-1&prefix=gas-", config=GasConfig(retention_s=60.0))
        app.setup(gas)
        client = TestClient(create_app(gas, secret="s", signin="dev"))
        page = client.get("/signin").text
        token = page.split('name="csrf" value="')[1].split('"')[0]
        client.post("/signin", data={"name": "ann", "tier": "premium", "email": "ann@example.org", "csrf": token})
        token = client.get("/annotations").text.split('name="csrf" value="')[1].split('"')[0]
        made = client.post("/api/jobs", files={"file": ("test.vcf", (SAMPLES / "test.vcf").read_bytes())},
                           headers={"X-CSRF-Token": token})
        assert made.status_code == 201, made.text
        job_id = made.json()["job_id"]
        Worker(gas.pipeline, "annotate", gas.backend, wait_s=0).run(until_idle=True)
        got = client.get(f"/api/jobs/{job_id}/result", follow_redirects=False)
        assert got.status_code == 303
        assert "gas-gas-results" in got.headers["location"] and "Signature" in got.headers["location"]
        # and without the CSRF token nothing is created
        assert client.post("/api/jobs", files={"file": ("t.vcf", b"x")}).status_code == 403


@pytest.mark.parametrize(("referer", "expected"), [
    ("http://testserver/jobs/abc", "/jobs/abc"),
    ("https://evil.example/phish", "/annotations"),
    ("http://testserver//evil.example/x", "/annotations"),
    (None, "/annotations"),
])
def test_upgrade_goes_back_only_to_a_page_of_this_site(tmp_path: Path, referer: str | None, expected: str) -> None:
    from fastapi.testclient import TestClient

    from examples.gas.web import create_app

    gas = app.open_gas(f"sqlite:///{tmp_path}/gas.db")
    app.setup(gas)
    try:
        client = TestClient(create_app(gas, secret="s", ops_hashes={}, signin="dev"), follow_redirects=False)
        import re

        first = re.search(r'name="csrf" value="([^"]+)"', client.get("/signin").text)
        assert first
        client.post("/signin", data={"name": "erin", "email": "erin@example.org", "tier": "free", "csrf": first.group(1)})
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/annotations").text)
        assert token
        headers = {"referer": referer} if referer else {}
        r = client.post("/upgrade", data={"csrf": token.group(1)}, headers=headers)
        assert r.status_code == 303 and r.headers["location"] == expected
    finally:
        gas.close()


def test_names_a_header_cannot_carry_download_right_and_bad_names_are_refused(tmp_path: Path) -> None:
    from urllib.parse import quote

    from fastapi.testclient import TestClient

    from examples.gas.web import create_app

    gas = app.open_gas(f"sqlite:///{tmp_path}/gas.db", config=GasConfig(retention_s=60.0))
    app.setup(gas)
    try:
        client = TestClient(create_app(gas, secret="s", ops_hashes={}, signin="dev"))
        page = client.get("/signin")
        # the headers of every page
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff" and page.headers["referrer-policy"]
        token = page.text.split('name="csrf" value="')[1].split('"')[0]
        client.post("/signin", data={"name": "ann", "tier": "premium", "email": "ann@example.org", "csrf": token})
        token = client.get("/annotations").text.split('name="csrf" value="')[1].split('"')[0]
        sample = (SAMPLES / "test.vcf").read_bytes()

        def upload(name: str) -> object:
            return client.post("/api/jobs", files={"file": (name, sample)}, headers={"X-CSRF-Token": token})

        # a name that is a path, or too long, is a 400 with the reason
        for bad, why in (("..\\..\\x.vcf", "not a path"), ("a" * 300 + ".vcf", "at most 200")):
            r = upload(bad)
            assert r.status_code == 400 and why in r.text, (bad, r.status_code, r.text)  # type: ignore[attr-defined]
        # a Unicode name goes through and its result downloads under that name
        made = upload("漢字.vcf")
        assert made.status_code == 201, made.text  # type: ignore[attr-defined]
        Worker(gas.pipeline, "annotate", gas.backend, wait_s=0).run(until_idle=True)
        got = client.get(f"/api/jobs/{made.json()['job_id']}/result")  # type: ignore[attr-defined]
        assert got.status_code == 200, got.text
        disposition = got.headers["content-disposition"]
        assert f"filename*=UTF-8''{quote('漢字')}" in disposition and 'filename="__' in disposition
    finally:
        gas.close()


def test_sign_out_kills_every_copy_of_the_old_cookie(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from examples.gas.web import create_app

    gas = app.open_gas(f"sqlite:///{tmp_path}/gas.db")
    app.setup(gas)
    try:
        web = create_app(gas, secret="s", ops_hashes={}, signin="dev")
        client = TestClient(web, follow_redirects=False)
        token = client.get("/signin").text.split('name="csrf" value="')[1].split('"')[0]
        client.post("/signin", data={"name": "hal", "email": "hal@example.org", "tier": "free", "csrf": token})
        assert client.get("/annotations").status_code == 200
        kept = dict(client.cookies)  # a copy of the signed-in cookie, as a thief would keep it
        token = client.get("/annotations").text.split('name="csrf" value="')[1].split('"')[0]
        assert client.post("/signout", data={"csrf": token}).status_code == 303
        thief = TestClient(web, follow_redirects=False, cookies=kept)
        assert thief.get("/annotations").status_code == 303  # to the sign-in page
        assert thief.get("/api/jobs").status_code == 401
        # and signing in again works
        token = client.get("/signin").text.split('name="csrf" value="')[1].split('"')[0]
        client.post("/signin", data={"name": "hal", "email": "hal@example.org", "tier": "free", "csrf": token})
        assert client.get("/annotations").status_code == 200
    finally:
        gas.close()


@pytest.fixture
def accounts_site(tmp_path: Path) -> Iterator[Site]:
    """The front end as a deployment runs it: accounts with passwords (the default mode)."""
    from examples.gas.web import create_app

    gas = app.open_gas(f"sqlite:///{tmp_path}/gas.db", config=GasConfig(retention_s=60.0))
    app.setup(gas)
    shots = Path(os.environ.get("GAS_WEB_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with served(create_app(gas, secret="test-secret", ops_hashes=OPS_HASHES)) as url:
        s = Site(url, gas, shots, [])
        yield s
        for w in s.workers:
            w.stop(timeout=10)
    gas.close()


def password_sign_in(b: object, site: Site, name: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    b.get(f"{site.url}/signin")  # type: ignore[attr-defined]
    b.find_element(By.ID, "name").send_keys(name)  # type: ignore[attr-defined]
    b.find_element(By.ID, "password").send_keys(password)  # type: ignore[attr-defined]
    b.find_element(By.ID, "signin").click()  # type: ignore[attr-defined]


def test_accounts_sign_up_sign_in_with_a_password_and_sign_out_for_good(accounts_site: Site,
                                                                        browser: object) -> None:
    from selenium.webdriver.common.by import By

    b, site = browser, accounts_site
    # Given an operator made an account for gil from the command line
    os.environ["GAS_USER_PASSWORD"] = "gil's long passphrase"
    try:
        from examples.gas.__main__ import main

        assert main(["user", "gil", "--backend", site.gas.backend.url, "--email", "gil@example.org"]) == 0
    finally:
        del os.environ["GAS_USER_PASSWORD"]
    # When someone signs in as gil with a wrong password, or by name only as the demo does
    b.delete_all_cookies()  # type: ignore[attr-defined]
    password_sign_in(b, site, "gil", "not his password")
    assert "wrong name or password" in b.find_element(By.ID, "message").text  # type: ignore[attr-defined]
    assert fetch(b, "/api/me")[0] == 401
    assert b.find_elements(By.ID, "tier-select") == []  # type: ignore[attr-defined]
    # Then they are refused; with his password he is in
    password_sign_in(b, site, "gil", "gil's long passphrase")
    assert b.find_element(By.ID, "who").text == "gil"  # type: ignore[attr-defined]
    b.save_screenshot(str(site.shots / "6-signed-in-with-password.png"))  # type: ignore[attr-defined]
    # A Unicode-named result downloads under its name, and every response has the headers
    named = site.shots.parent / "uploads" / "漢字 données.vcf"
    named.parent.mkdir(exist_ok=True)
    named.write_bytes((SAMPLES / "test.vcf").read_bytes())
    job_id = upload(b, named)
    Worker(site.gas.pipeline, "annotate", site.gas.backend, wait_s=0).run(until_idle=True)
    status, disposition, body = b.execute_async_script(  # type: ignore[attr-defined]
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(async r => done([r.status, r.headers.get('content-disposition'), "
        "await r.text()]));", f"/api/jobs/{job_id}/result")
    from urllib.parse import quote

    assert status == 200 and "VT=" in body
    assert f"filename*=UTF-8''{quote('漢字 données.annot.vcf')}" in disposition, disposition
    header = b.execute_async_script(  # type: ignore[attr-defined]
        "const done = arguments[arguments.length - 1];"
        "fetch('/annotations').then(r => done([r.headers.get('content-security-policy'), "
        "r.headers.get('x-content-type-options'), r.headers.get('referrer-policy')]));")
    assert "frame-ancestors 'none'" in header[0] and header[1] == "nosniff" and header[2]
    # Sign-out ends the session on the server: the cookie saved before it no longer works
    kept = b.get_cookies()  # type: ignore[attr-defined]
    b.find_element(By.ID, "signout").click()  # type: ignore[attr-defined]
    wait_for(lambda: b.current_url.endswith("/signin"), what="the sign-in page")  # type: ignore[attr-defined]
    for c in kept:
        b.add_cookie({k: c[k] for k in ("name", "value", "path") if k in c})  # type: ignore[attr-defined]
    assert fetch(b, "/api/me")[0] == 401
    # A newcomer signs up; the name of a user the deployment knows cannot be claimed
    b.get(f"{site.url}/signup")  # type: ignore[attr-defined]
    for field, value in (("name", "gil"), ("password", "a fresh passphrase")):
        b.find_element(By.ID, field).send_keys(value)  # type: ignore[attr-defined]
    b.find_element(By.ID, "signup").click()  # type: ignore[attr-defined]
    assert "the name gil is taken" in b.find_element(By.ID, "message").text  # type: ignore[attr-defined]
    b.get(f"{site.url}/signup")  # type: ignore[attr-defined]
    for field, value in (("name", "hana"), ("email", "hana@example.org"), ("password", "a fresh passphrase")):
        b.find_element(By.ID, field).send_keys(value)  # type: ignore[attr-defined]
    b.find_element(By.ID, "signup").click()  # type: ignore[attr-defined]
    assert b.find_element(By.ID, "who").text == "hana"  # type: ignore[attr-defined]
    prof = app.profile(site.gas, "hana")
    assert prof["password_hash"].startswith("$argon2") and "a fresh passphrase" not in str(prof)


def test_in_accounts_mode_nobody_is_anyone_by_name_alone(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from examples.gas.web import create_app

    gas = app.open_gas(f"sqlite:///{tmp_path}/gas.db")
    app.setup(gas)
    try:
        app.save_profile(gas, {"user_id": "admin", "tier": "premium"})  # known, no password yet
        client = TestClient(create_app(gas, secret="s", ops_hashes={}), follow_redirects=False)
        token = client.get("/signin").text.split('name="csrf" value="')[1].split('"')[0]
        for form in ({"name": "admin", "tier": "premium"}, {"name": "admin", "password": ""},
                     {"name": "nobody", "password": "whatever it is"}):
            assert client.post("/signin", data={**form, "csrf": token}).status_code == 401
            assert client.get("/api/me").status_code == 401
        # a short password is refused with the reason, and so is a name with a path in it
        for name, password, why in (("ivy", "short", "at least 10"), ("../ivy", "long enough pass", "letters")):
            r = client.post("/signup", data={"name": name, "password": password, "csrf": token})
            assert r.status_code == 400 and why in r.text
        # a new password (set by an operator) ends the sessions made with the old one
        app.add_account(gas, "ivy", "first passphrase")
        assert client.post("/signin", data={"name": "ivy", "password": "first passphrase",
                                            "csrf": token}).status_code == 303
        assert client.get("/api/me").json()["user"] == "ivy"
        app.add_account(gas, "ivy", "second passphrase")
        assert client.get("/api/me").status_code == 401
    finally:
        gas.close()


@pytest.mark.parametrize("forge", [False, True], ids=["signed-by-the-issuer", "forged"])
def test_users_sign_in_through_an_openid_connect_provider(tmp_path: Path, browser: object,
                                                          monkeypatch: pytest.MonkeyPatch, forge: bool) -> None:
    from oidc_provider import provider
    from selenium.webdriver.common.by import By

    from examples.gas.web import create_app

    sub = "5f2c8e1a-0b7d-4c3e-9a6f-1d2e3f4a5b6c"  # as Globus names a user
    idp = provider(client_id="gas-web", client_secret="s3cret", sub=sub, email="kim@example.org", forge=forge)
    gas = app.open_gas(f"sqlite:///{tmp_path}/gas.db")
    app.setup(gas)
    b = browser
    try:
        with served(idp) as issuer:
            for k, v in {"GAS_OIDC_ISSUER": issuer, "GAS_OIDC_CLIENT_ID": "gas-web",
                         "GAS_OIDC_CLIENT_SECRET": "s3cret"}.items():
                monkeypatch.setenv(k, v)
            with served(create_app(gas, secret="test-secret", ops_hashes={}, signin="oidc")) as url:
                # When the user follows "sign in" to the provider and back
                b.delete_all_cookies()  # type: ignore[attr-defined]
                b.get(f"{url}/signin")  # type: ignore[attr-defined]
                assert b.find_elements(By.ID, "password") == []  # type: ignore[attr-defined]
                b.find_element(By.ID, "signin-oidc").click()  # type: ignore[attr-defined]
                if forge:
                    # Then a token the issuer's keys do not verify signs nobody in
                    wait_for(lambda: b.find_element(By.ID, "message"), what="the refusal")  # type: ignore[attr-defined]
                    assert "refused" in b.find_element(By.ID, "message").text  # type: ignore[attr-defined]
                    assert fetch(b, "/api/me")[0] == 401
                    return
                # Then they are signed in as the provider's subject, with its email kept
                wait_for(lambda: b.find_element(By.ID, "who").text == sub, what="signed in")  # type: ignore[attr-defined]
                assert app.profile(gas, sub)["email"] == "kim@example.org"
                # and password sign-in is not open beside it
                token = b.execute_script(  # type: ignore[attr-defined]
                    "return document.querySelector('input[name=csrf]').value")
                status = b.execute_async_script(  # type: ignore[attr-defined]
                    "const done = arguments[arguments.length - 1];"
                    "fetch('/signup', {method: 'POST', body: new URLSearchParams({name: 'x', password: "
                    "'long enough pass', csrf: arguments[0]})}).then(r => done(r.status));", token)
                assert status == 404
    finally:
        gas.close()
