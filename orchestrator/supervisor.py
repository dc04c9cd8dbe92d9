"""Run a whole pipeline: a worker process per stage (N each), restarted when one dies.

``orchestrator worker P --stage all [--processes N]`` is this. Each child is an ordinary
``orchestrator worker P --stage S``; a child that exits while the supervisor is not stopping
(killed, crashed, out of memory) is started again after a backoff that doubles up to 30 s and
resets once a child has run a minute. SIGTERM (or SIGINT) is forwarded to every child, which
finishes its handlers within its grace period; a child still running past the grace period
(plus a margin) is killed. With ``until_idle`` the supervisor stops its children once every
queue of the pipeline has been empty (nothing visible, in flight or delayed) for a few checks.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from orchestrator.stop_signals import on_stop_signals

log = structlog.get_logger("orchestrator.supervisor")

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a child that ran this long resets its slot's backoff
KILL_MARGIN_S = 5.0
IDLE_CHECKS = 3
POLL_S = 0.2


@dataclass
class _Slot:
    stage: str
    proc: subprocess.Popen[bytes]
    started: float
    backoff_s: float = BACKOFF_START_S
    restart_at: float | None = None
    restarts: int = 0


@dataclass
class Supervisor:
    #: the command line of one child worker for a stage
    argv_for: Callable[[str], list[str]]
    stages: Sequence[str]
    processes: int = 1
    grace_s: float = 30.0
    #: with until-idle: True when every queue of the pipeline is empty
    idle: Callable[[], bool] | None = None
    slots: list[_Slot] = field(default_factory=list)
    _stop_requested: bool = False

    def _spawn(self, stage: str) -> subprocess.Popen[bytes]:
        # children log straight to our stderr: a pipe nobody reads would hide their errors
        proc = subprocess.Popen(self.argv_for(stage))
        log.info("worker process started", stage=stage, pid=proc.pid)
        return proc

    def request_stop(self) -> None:
        """Stop the children, within ``POLL_S``. Safe anywhere, a signal handler included: it
        takes no lock (see ``stop_signals``)."""
        self._stop_requested = True

    def install_signals(self) -> None:
        """``request_stop`` on SIGTERM or SIGINT (call from the main thread)."""
        on_stop_signals(self.request_stop)

    def run(self) -> int:
        """Supervise until stopped (or idle); 0 when every child stopped cleanly."""
        now = time.monotonic()
        self.slots = [_Slot(s, self._spawn(s), now) for s in self.stages for _ in range(self.processes)]
        idle_seen = 0
        while True:
            time.sleep(POLL_S)
            if self._stop_requested:
                break
            now = time.monotonic()
            for slot in self.slots:
                self._tend(slot, now)
            if self.idle is not None:
                idle_seen = idle_seen + 1 if self.idle() else 0
                if idle_seen >= IDLE_CHECKS:
                    log.info("pipeline idle; stopping")
                    break
        return self._stop_all()

    def _tend(self, slot: _Slot, now: float) -> None:
        if slot.restart_at is not None:
            if now >= slot.restart_at:
                slot.proc, slot.started, slot.restart_at = self._spawn(slot.stage), now, None
                slot.restarts += 1
            return
        code = slot.proc.poll()
        if code is None:
            return
        if now - slot.started >= STABLE_AFTER_S:
            slot.backoff_s = BACKOFF_START_S
        log.warning("worker process exited; restarting", stage=slot.stage, pid=slot.proc.pid, code=code,
                    restart_in_s=slot.backoff_s)
        slot.restart_at = now + slot.backoff_s
        slot.backoff_s = min(BACKOFF_MAX_S, slot.backoff_s * 2)

    def _stop_all(self) -> int:
        live = [s.proc for s in self.slots if s.restart_at is None and s.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + KILL_MARGIN_S
        codes = []
        for proc in live:
            try:
                codes.append(proc.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log.error("worker process still running past the grace period; killed", pid=proc.pid)
                proc.kill()
                codes.append(proc.wait())
        return 0 if all(c == 0 for c in codes) else 1
