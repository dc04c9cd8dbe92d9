"""The dashboard's routes: pages for people, ``/api`` (with OpenAPI at ``/openapi.json``) for scripts.

    orchestrator web MODULE:PIPELINE --backend URL [--port 8080]

Pages are server-rendered (no script: the strict Content-Security-Policy allows none); the
overview refreshes itself every few seconds. Every write (redrive, cancel, retry) is an
operator's, carries the session's CSRF token, and a redrive is shown as a dry run first.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at
# definition time, and ``Viewer``/``Operator`` are local to the functions that add routes.
import hmac
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from orchestrator.backends import Backend
from orchestrator.errors import InvalidTransition, JobNotFound, NotADeadLetterQueue, RetryImpossible
from orchestrator.ops import dlq
from orchestrator.pipeline import Pipeline
from orchestrator.schedules import describe
from orchestrator.status import JobRecord, JobStatus
from orchestrator.web import views
from orchestrator.web.auth import OPERATOR, Session, Sessions, role_for

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
COOKIE = "orchestrator_session"
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def when(at: float | None) -> str:
    return "-" if not at else datetime.fromtimestamp(float(at), tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


TEMPLATES.env.filters["when"] = when


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.update(HEADERS)
        return response


def base(request: Request) -> str:
    """Where the dashboard is mounted ("" at the root; "/ops" inside the GAS web app)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


class Dashboard:
    """What every route of one dashboard shares: the pipeline, its backend and the sessions."""

    def __init__(self, pipeline: Pipeline, backend: Backend, *, hashes: dict[str, str], secure_cookie: bool) -> None:
        self.pipeline, self.backend, self.hashes, self.secure_cookie = pipeline, backend, hashes, secure_cookie
        self.sessions = Sessions()

    def session(self, request: Request) -> Session:
        s = self.sessions.get(request.cookies.get(COOKIE))
        if s is None:
            raise HTTPException(401, "sign in first")
        return s

    def operator(self, request: Request) -> Session:
        s = self.session(request)
        if s.role != OPERATOR:
            raise HTTPException(403, "read-only: this needs an operator")
        return s

    def render(self, request: Request, name: str, s: Session | None, status_code: int = 200,
               **ctx: Any) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, name, {"s": s, "pipeline": self.pipeline.name,
                                                          "base": base(request), **ctx}, status_code=status_code)

    def dead_letter_queue(self, queue: str) -> None:
        try:
            dlq.check_dead_letter_queue(self.backend, self.pipeline, queue)
        except NotADeadLetterQueue as exc:
            raise HTTPException(404, str(exc)) from None

    def redrive(self, queue: str, *, dry_run: bool) -> dict[str, Any]:
        self.dead_letter_queue(queue)
        if dry_run:
            shown = dlq.show(self.backend, queue, limit=100, pipeline=self.pipeline)
            return {"dry_run": True, "would_redrive": [m["message_id"] for m in shown]}
        done = dlq.redrive(self.backend, self.pipeline, queue)
        return {"dry_run": False, "redriven": done.redriven, "refused": done.refused}

    def control(self, job_id: str, what: str) -> dict[str, Any]:
        try:
            if what == "cancel":
                rec = self.pipeline.cancel(self.backend, job_id, reason="cancelled from the dashboard")
            else:
                rec = self.pipeline.retry(self.backend, job_id, by="dashboard", reason="retried from the dashboard")
        except JobNotFound:
            raise HTTPException(404, f"no job {job_id}") from None
        except (InvalidTransition, RetryImpossible) as exc:
            raise HTTPException(409, str(exc)) from None
        return {"job_id": rec.job_id, "status": rec.status.value}

    def job(self, job_id: str) -> JobRecord:
        job = self.backend.store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job


def check_csrf(s: Session, token: str | None) -> None:
    if not token or not hmac.compare_digest(token, s.csrf):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")


def create_app(pipeline: Pipeline, backend: Backend, *, hashes: dict[str, str], secure_cookie: bool = False
               ) -> FastAPI:
    """The dashboard for ``pipeline`` on ``backend``; ``hashes``: role -> argon2 hash."""
    api = FastAPI(title=f"orchestrator: {pipeline.name}", version="1.0",
                  description="Queues, jobs, attempts and dead letters of one pipeline.")
    api.add_middleware(SecurityHeaders)
    d = Dashboard(pipeline, backend, hashes=hashes, secure_cookie=secure_cookie)

    @api.exception_handler(HTTPException)
    async def errors(request: Request, exc: HTTPException) -> Response:
        if request.url.path.removeprefix(base(request)).startswith("/api"):
            return PlainTextResponse(str(exc.detail), status_code=exc.status_code)
        if exc.status_code == 401:
            return RedirectResponse(f"{base(request)}/signin", status_code=303)
        return d.render(request, "error.html", None, status_code=exc.status_code, message=exc.detail)

    add_signin_routes(api, d)
    add_api_routes(api, d)
    add_job_pages(api, d)
    add_dead_letter_pages(api, d)
    return api


def add_signin_routes(api: FastAPI, d: Dashboard) -> None:
    Viewer = Annotated[Session, Depends(d.session)]

    @api.get("/signin", include_in_schema=False)
    def signin_page(request: Request) -> HTMLResponse:
        return d.render(request, "signin.html", None, unset=not d.hashes)

    @api.post("/signin", include_in_schema=False)
    def signin(request: Request, password: Annotated[str, Form()]) -> Response:
        role = role_for(password, d.hashes)
        if role is None:
            return d.render(request, "signin.html", None, status_code=401, message="wrong password")
        # never a caller-given URL: no open redirect
        response = RedirectResponse(f"{base(request)}/", status_code=303)
        response.set_cookie(COOKIE, d.sessions.start(role), httponly=True, samesite="strict",
                            secure=d.secure_cookie, path=f"{base(request)}/")
        return response

    @api.post("/signout", include_in_schema=False)
    def signout(request: Request, s: Viewer, csrf: Annotated[str, Form()]) -> Response:
        check_csrf(s, csrf)
        d.sessions.end(request.cookies.get(COOKIE))
        response = RedirectResponse(f"{base(request)}/signin", status_code=303)
        response.delete_cookie(COOKIE, path=f"{base(request)}/")
        return response


def add_api_routes(api: FastAPI, d: Dashboard) -> None:
    Viewer = Annotated[Session, Depends(d.session)]
    Operator = Annotated[Session, Depends(d.operator)]
    pipeline, backend = d.pipeline, d.backend

    @api.get("/api/stages", tags=["read"])
    def api_stages(s: Viewer) -> list[dict[str, Any]]:
        """Per stage: queue depth, in flight, delayed, dead letters, and the last hour's
        committed and failed steps in five-minute buckets."""
        return [{**r.__dict__, "failure_rate": r.failure_rate} for r in views.overview(pipeline, backend)]

    @api.get("/api/jobs", tags=["read"])
    def api_jobs(s: Viewer, status: JobStatus | None = None, stage: str | None = None, user: str | None = None,
                 since: float | None = None, job_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        found = views.search(backend, status=status.value if status else None, stage=stage, user=user,
                             since=since, job_id=job_id, limit=max(1, min(limit, 1000)))
        return [r.model_dump(mode="json", exclude={"version"}) for r in found]

    @api.get("/api/jobs/{job_id}", tags=["read"])
    def api_job(job_id: str, s: Viewer) -> dict[str, Any]:
        return d.job(job_id).model_dump(mode="json", exclude={"version"})

    @api.get("/api/dead-letters/{queue}", tags=["read"])
    def api_dead(queue: str, s: Viewer, limit: int = 50) -> list[dict[str, Any]]:
        d.dead_letter_queue(queue)
        return dlq.show(backend, queue, limit=max(1, min(limit, 500)), pipeline=pipeline)

    @api.post("/api/dead-letters/{queue}/redrive", tags=["operate"])
    def api_redrive(queue: str, request: Request, s: Operator, dry_run: bool = True) -> dict[str, Any]:
        """Send the queue's dead letters back (``dry_run=false``); the dry run lists them."""
        check_csrf(s, request.headers.get("x-csrf-token"))
        return d.redrive(queue, dry_run=dry_run)

    @api.post("/api/jobs/{job_id}/cancel", tags=["operate"])
    def api_cancel(job_id: str, request: Request, s: Operator) -> dict[str, Any]:
        check_csrf(s, request.headers.get("x-csrf-token"))
        return d.control(job_id, "cancel")

    @api.post("/api/jobs/{job_id}/retry", tags=["operate"])
    def api_retry(job_id: str, request: Request, s: Operator) -> dict[str, Any]:
        check_csrf(s, request.headers.get("x-csrf-token"))
        return d.control(job_id, "retry")


def add_job_pages(api: FastAPI, d: Dashboard) -> None:
    Viewer = Annotated[Session, Depends(d.session)]
    Operator = Annotated[Session, Depends(d.operator)]
    pipeline, backend = d.pipeline, d.backend

    @api.get("/static/dashboard.css", include_in_schema=False)
    def css() -> Response:
        return Response((HERE / "templates" / "dashboard.css").read_text(), media_type="text/css")

    @api.get("/", include_in_schema=False)
    def overview_page(request: Request, s: Viewer) -> HTMLResponse:
        rows = views.overview(pipeline, backend)
        charts = {r.stage: {"committed": views.bars(r.committed), "failed": views.bars(r.failed)} for r in rows}
        schedules = describe(pipeline, backend)
        return d.render(request, "overview.html", s, rows=rows, charts=charts, schedules=schedules)

    @api.get("/jobs", include_in_schema=False)
    def jobs_page(request: Request, s: Viewer, status: str = "", stage: str = "", user: str = "",
                  since_h: str = "", job_id: str = "") -> HTMLResponse:
        since = None
        if since_h.strip():
            try:
                since = backend.clock.now() - float(since_h) * 3600
            except ValueError:
                raise HTTPException(400, "since: hours, a number") from None
        if status and status not in {x.value for x in JobStatus}:
            raise HTTPException(400, f"no status {status}")
        found = views.search(backend, status=status or None, stage=stage or None, user=user or None, since=since,
                             job_id=job_id or None)
        return d.render(request, "jobs.html", s, jobs=found, q={"status": status, "stage": stage, "user": user,
                                                                "since_h": since_h, "job_id": job_id},
                        statuses=[x.value for x in JobStatus], stages=list(pipeline.stages))

    @api.get("/jobs/{job_id}", include_in_schema=False)
    def job_page(request: Request, job_id: str, s: Viewer, message: str = "") -> HTMLResponse:
        job = d.job(job_id)
        return d.render(request, "job.html", s, job=job, timeline=views.timeline(job), message=message)

    @api.post("/jobs/{job_id}/{what}", include_in_schema=False)
    def job_action(request: Request, job_id: str, what: str, s: Operator, csrf: Annotated[str, Form()]) -> Response:
        check_csrf(s, csrf)
        if what not in ("cancel", "retry"):
            raise HTTPException(404, "no such action")
        d.control(job_id, what)
        return RedirectResponse(f"{base(request)}/jobs/{job_id}", status_code=303)


def add_dead_letter_pages(api: FastAPI, d: Dashboard) -> None:
    Viewer = Annotated[Session, Depends(d.session)]
    Operator = Annotated[Session, Depends(d.operator)]

    @api.get("/dead-letters/{queue}", include_in_schema=False)
    def dead_page(request: Request, queue: str, s: Viewer) -> HTMLResponse:
        d.dead_letter_queue(queue)
        return d.render(request, "dead.html", s, queue=queue, result=None,
                        letters=dlq.show(d.backend, queue, limit=50, pipeline=d.pipeline))

    @api.post("/dead-letters/{queue}/redrive", include_in_schema=False)
    def dead_redrive(request: Request, queue: str, s: Operator, csrf: Annotated[str, Form()],
                     confirm: Annotated[str, Form()] = "") -> HTMLResponse:
        check_csrf(s, csrf)
        result = d.redrive(queue, dry_run=confirm != "yes")
        return d.render(request, "dead.html", s, queue=queue, result=result,
                        letters=dlq.show(d.backend, queue, limit=50, pipeline=d.pipeline))


def serve(pipeline: Pipeline, backend: Backend, *, hashes: dict[str, str], host: str, port: int,
          secure_cookie: bool) -> None:
    import uvicorn

    uvicorn.run(create_app(pipeline, backend, hashes=hashes, secure_cookie=secure_cookie), host=host, port=port,
                log_level="warning")
