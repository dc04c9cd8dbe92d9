"""``doctor`` says what is in effect, where each setting came from, and warns on risky ones."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from orchestrator import JobStatus, Pipeline, Result
from orchestrator.backends import memory_backend
from orchestrator.cli import main
from orchestrator.clock import SimClock
from orchestrator.controllers.controller import Controller
from orchestrator.ops.doctor import diagnose

PIPE = textwrap.dedent(
    """
    from orchestrator import Pipeline, Result

    pipeline = Pipeline("doc")
    pipeline.stage("a", source="qa", visibility_timeout_s=45)(lambda ctx, msg: Result())
    pipeline.stage("b", source="qb")(lambda ctx, msg: Result())
    """
)


def run_doctor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
               *extra: str) -> dict[str, object]:
    (tmp_path / "settingspipe.py").write_text(PIPE)
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'd.db'}"
    assert main(["setup", "settingspipe:pipeline", "--backend", url, *extra]) == 0
    capsys.readouterr()
    main(["doctor", "settingspipe:pipeline", "--backend", url, "--json", *extra])
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_every_setting_is_shown_with_where_it_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "o.toml").write_text("[stages.a]\nmax_receives = 7\nretry_base_s = 2\n[stages.b]\nwait_s = 0.5\n")
    monkeypatch.setenv("ORCHESTRATOR_STAGES__A__RETRY_BASE_S", "3")
    report = run_doctor(tmp_path, monkeypatch, capsys, "--config", str(tmp_path / "o.toml"))
    rows = {(r["stage"], r["setting"]): (r["value"], r["source"]) for r in report["settings"]}  # type: ignore[union-attr, index]
    assert rows[("a", "visibility_timeout_s")] == (45, "code")
    assert rows[("a", "max_receives")] == (7, "config file")
    assert rows[("a", "retry_base_s")] == (3, "environment")
    assert rows[("b", "wait_s")] == (0.5, "config file")
    assert rows[("b", "max_receives")] == (5, "code")


def test_max_receives_below_three_with_batches_is_warned_about() -> None:
    p = Pipeline("w")
    p.stage("risky", source="q1", max_receives=1)(lambda ctx, msg: Result())
    p.stage("single", source="q2", max_receives=1, batch_size=1)(lambda ctx, msg: Result())
    p.stage("fine", source="q3", max_receives=3)(lambda ctx, msg: Result())
    backend = memory_backend(SimClock())
    p.setup(backend)
    warned = {f.stage for f in diagnose(p, backend) if "max_receives" in f.message}
    assert warned == {"risky"}


def test_handlers_slower_than_the_visibility_timeout_are_warned_about() -> None:
    # Given a stage whose handlers took 12 s while its visibility timeout is 10 s
    clock = SimClock()
    p = Pipeline("slow")

    @p.stage("slow", source="q", visibility_timeout_s=10)
    def slow(ctx, msg):  # type: ignore[no-untyped-def]
        clock.advance(12)
        return Result(status=JobStatus.COMPLETED)

    p.stage("quick", source="q2", visibility_timeout_s=10)(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    backend = memory_backend(clock)
    p.setup(backend)
    for i in range(25):
        p.submit(backend, job_id=f"s{i}", payload={}, queue="q")
        p.submit(backend, job_id=f"q{i}", payload={}, queue="q2")
    for stage, queue in (("slow", "q"), ("quick", "q2")):
        ctrl = Controller(p, stage, backend)
        while got := backend.transport.receive(queue, max_messages=1, wait_s=0, visibility_s=10):
            ctrl.handle_batch(got)
    # Then doctor warns about that stage only, with what it saw
    slow_findings = [f.message for f in diagnose(p, backend) if "visibility timeout" in f.message]
    assert len(slow_findings) == 1 and "handlers took up to 12.0s (p99 of 25 steps)" in slow_findings[0]


def test_the_old_name_of_the_visibility_timeout_still_works_and_says_its_new_name(tmp_path: Path) -> None:
    from orchestrator import Pipeline, Result
    from orchestrator.errors import ConfigError
    from orchestrator.settings import apply_settings, load_settings

    p = Pipeline("renamed")
    with pytest.warns(DeprecationWarning, match="visibility_timeout_s"):
        p.stage("s", source="in", visibility_timeout=12)(lambda ctx, msg: Result())
    assert p.get("s").visibility_timeout_s == 12
    with pytest.raises(ConfigError, match="one setting"):
        p.stage("t", source="in2", visibility_timeout=12, visibility_timeout_s=13)(lambda ctx, msg: Result())
    # a config file written with the old name sets the same thing, and says it came from the file
    cfg = tmp_path / "orchestrator.toml"
    cfg.write_text("[stages.s]\nvisibility_timeout = 40\n")
    apply_settings(p, load_settings(cfg))
    assert p.get("s").visibility_timeout_s == 40
    assert p.get("s").setting_sources["visibility_timeout_s"] == "config file"


def test_the_old_name_of_the_begin_mode_still_works_and_says_its_new_name(tmp_path: Path) -> None:
    from orchestrator.settings import apply_settings, load_settings

    p = Pipeline("renamed")
    with pytest.warns(DeprecationWarning, match="begin="):
        p.stage("s", source="in", claim="lazy")(lambda ctx, msg: Result())
    assert p.get("s").begin == "lazy"
    cfg = tmp_path / "orchestrator.toml"
    cfg.write_text('[stages.s]\nclaim = "eager"\n')
    apply_settings(p, load_settings(cfg))
    assert p.get("s").begin == "eager" and p.get("s").setting_sources["begin"] == "config file"
