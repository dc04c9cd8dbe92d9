"""Tell an outage (retry later, the whole batch) from data a backend refused (isolate the item).

A write shared by a batch can fail for two kinds of reason. The backend may be unreachable,
locked or throttling: nothing is wrong with the batch, and it is retried whole after the
visibility timeout. Or the backend refused one item's data (a NUL PostgreSQL text cannot
hold, an index row too large, a value a driver cannot encode): retrying the batch would fail
the same way forever, so the controller finds the item that fails alone and settles it, and
its batch-mates go on. Only the first kind is an outage.

Drivers are recognised by their exception types and SQLSTATE classes, without importing them
(a deployment has only the drivers of its backends installed).
"""

from __future__ import annotations

import sqlite3

from orchestrator.errors import BackendUnavailable, FatalBackendError

#: SQLSTATE classes that say the server, not the data, is the problem: connection (08),
#: transaction rollback - deadlock, serialization (40), insufficient resources (53),
#: operator intervention - shutdown, cancel (57), system error (58), internal error (XX)
_PG_OUTAGE_CLASSES = frozenset({"08", "40", "53", "57", "58", "XX"})
#: AWS error codes of a busy or failing service (the rest are about the request)
_AWS_OUTAGE_CODES = frozenset({
    "ThrottlingException", "Throttling", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
    "TransactionInProgressException", "InternalServerError", "InternalError", "ServiceUnavailable",
    "ServiceUnavailableException", "SlowDown", "RequestTimeout", "RequestTimeoutException",
    "KMS.ThrottlingException", "LimitExceededException",
})


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the backend could not do the work now, whatever the data."""
    if isinstance(exc, BackendUnavailable | FatalBackendError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, sqlite3.Error):
        # locked, busy, disk I/O, disk full, cannot open: the file, not the row
        return isinstance(exc, sqlite3.OperationalError)
    module = type(exc).__module__.split(".")[0]
    if module in ("psycopg", "psycopg_pool"):
        state = getattr(exc, "sqlstate", None)
        if state is None:  # no server answer at all: a lost connection, a pool timeout
            return type(exc).__name__ not in ("DataError", "ProgrammingError", "InterfaceError")
        return str(state)[:2] in _PG_OUTAGE_CLASSES
    if module == "botocore":
        response = getattr(exc, "response", None)
        if response is None:  # no answer: endpoint unreachable, timeouts (not a bad parameter)
            return type(exc).__name__ not in ("ParamValidationError", "ValidationError")
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code in _AWS_OUTAGE_CODES or status >= 500
    return False
