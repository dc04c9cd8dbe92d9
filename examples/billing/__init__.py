"""A billing pipeline with a deliberately non-idempotent handler, and its fixed twin.

``charge`` sends an invoice to an outside ledger every time it runs. Handlers run at least
once, so a crash after the handler and before the commit sends a second invoice. The fix is
to pass ``ctx.effect_key(...)`` to the outside system as an idempotency key.
"""

from __future__ import annotations

from typing import Any

from orchestrator import Context, Envelope, JobStatus, Pipeline, Result


class Ledger:
    """The outside system: it records invoices, deduplicating by key when given one."""

    def __init__(self) -> None:
        self.invoices: list[tuple[str, int]] = []
        self._keys: set[str] = set()

    def clear(self) -> None:
        self.invoices.clear()
        self._keys.clear()

    def invoice(self, job_id: str, amount: int, *, idempotency_key: str | None = None) -> None:
        if idempotency_key is not None:
            if idempotency_key in self._keys:
                return
            self._keys.add(idempotency_key)
        self.invoices.append((job_id, amount))


def billing_pipeline(ledger: Ledger, *, idempotent: bool) -> Pipeline:
    p = Pipeline("billing")

    @p.stage("price", source="orders", emit_to="priced", max_receives=6)
    def price(ctx: Context, msg: Envelope) -> Result:
        amount = int(msg.payload["qty"]) * 5
        return Result(status=JobStatus.RUNNING, fields={"amount": amount}, emit=[{"amount": amount}])

    @p.stage("charge", source="priced", max_receives=6)
    def charge(ctx: Context, msg: Envelope) -> Result:
        key: Any = ctx.effect_key("invoice") if idempotent else None
        ledger.invoice(msg.job_id, msg.payload["amount"], idempotency_key=key)
        return Result(status=JobStatus.COMPLETED, fields={"charged": True})

    return p
