"""The GAS web front end: sign in, upload, my annotations, job page, upgrade, operator page.

    python -m examples.gas web --backend URL [--port 8000]

FastAPI + Jinja2: FastAPI gives the JSON API (``/api``) its OpenAPI description
(``/openapi.json``, ``/docs``) for free and streams request bodies, which the upload's size limit
needs; the pages are server-rendered templates that call the same API for live status. Sessions
are signed cookies (Starlette's ``SessionMiddleware``, itsdangerous); every form and API write
carries the session's CSRF token.
"""


import hmac
import os
import secrets
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO, ClassVar
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.sessions import SessionMiddleware

from examples.gas import app as gas_app
from examples.gas.web_signin import add_signin_routes
from orchestrator import JobRecord
from orchestrator.errors import ConfigError, ObjectNotFound

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
#: bytes of multipart framing allowed beyond a tier's file limit (boundaries, headers, the token)
FORM_OVERHEAD = 16 * 1024
PREMIUM_LIMIT_BYTES = 64 * 1024 * 1024


def when(at: float | int | None) -> str:
    if not at:
        return "-"
    return datetime.fromtimestamp(float(at), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


TEMPLATES.env.filters["when"] = when


class UploadTooLarge(Exception):
    pass


DEFAULT_UPLOADS_IN_FLIGHT = "1GB"


def parse_size(text: str, what: str) -> int:
    """``512MB``, ``1GB``, ``2GiB`` or a byte count."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    try:
        value = int(float(num) * units[t[len(num):]])
    except (KeyError, ValueError):
        raise ConfigError(f"{what}={text!r}: a size such as 512MB, 1GB or a byte count") from None
    if value <= 0:
        raise ConfigError(f"{what}={text!r}: a size above zero")
    return value


class InFlight:
    """The bytes of uploads being received now, capped: uploads spool to disk, so this bounds
    the temporary space (and the work queued behind them), not memory."""

    def __init__(self, cap: int) -> None:
        self.cap, self.used = cap, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used and self.used + n > self.cap:
                return False  # (one upload alone is let in, whatever its size: the tier limits it)
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


MAX_NAME_BYTES = 200


def name_problem(name: str) -> str | None:
    """Why an uploaded file's name cannot be kept (it names the result file and goes into a
    header and a storage key), or None."""
    if "/" in name or "\\" in name or name in (".", ".."):
        return f"{name!r}: a file name, not a path"
    if "\ufffd" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"{name!r}: the name has bytes that are not text"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"the file name is {len(name.encode())} bytes; at most {MAX_NAME_BYTES}"
    return None


def attachment(name: str) -> str:
    """A Content-Disposition for ``name`` any browser saves right (RFC 6266: an ASCII fallback
    and the UTF-8 name in ``filename*``), so a header never has to carry what latin-1 cannot."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class SecurityHeaders(BaseHTTPMiddleware):
    """Frames, sniffing and referrers off on every response (the pages' own scripts stay: they
    poll the API for a job's status)."""

    HEADERS: ClassVar[dict[str, str]] = {"Content-Security-Policy": "frame-ancestors 'none'; object-src 'none'; base-uri 'none'; "
                                                                    "form-action 'self'",
                                         "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                                         "X-Frame-Options": "DENY"}

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        for k, v in self.HEADERS.items():
            response.headers.setdefault(k, v)
        return response


class _UploadParts:
    """The multipart parser's callbacks: the file's bytes go to ``spool`` (up to ``limit``),
    form fields (the CSRF token) are kept, small."""

    def __init__(self, spool: BinaryIO, limit: int) -> None:
        self.spool, self.limit, self.written = spool, limit, 0
        self.parts: list[dict[str, Any]] = []
        self.cur: dict[str, Any] = {}
        self.header = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_headers_finished": self.on_headers_finished,
                "on_part_data": self.on_part_data, "on_part_end": self.on_part_end}

    def on_part_begin(self) -> None:
        self.cur = {"headers": {}, "data": bytearray(), "file": None}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header[:] = data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.cur["headers"][bytes(self.header).lower()] = data[start:end]

    def on_headers_finished(self) -> None:
        _, disp = parse_options_header(self.cur["headers"].get(b"content-disposition", b""))
        self.cur["file"] = disp.get(b"name", b"") == b"file" and not self.written

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.cur["file"]:
            self.spool.write(data[start:end])
            self.written += end - start
            if self.written > self.limit:
                raise UploadTooLarge()
        else:  # a form field (the CSRF token): small
            self.cur["data"].extend(data[start:end])
            if len(self.cur["data"]) > FORM_OVERHEAD:
                raise HTTPException(400, "a form field is too long")

    def on_part_end(self) -> None:
        self.parts.append(self.cur)

    def name_and_token(self) -> tuple[str, str | None]:
        name, token = "", None
        for p in self.parts:
            _, disp = parse_options_header(p["headers"].get(b"content-disposition", b""))
            if p["file"]:
                name = disp.get(b"filename", b"upload.vcf").decode(errors="replace")
            elif disp.get(b"name", b"") == b"csrf":
                token = bytes(p["data"]).decode(errors="replace")
        return name, token


async def read_upload(request: Request, limit: int, spool: BinaryIO) -> tuple[str, int, str | None]:
    """Parse the multipart body as it streams in, the file's bytes into ``spool`` (a
    temporary file: memory stays flat however many large uploads run); stop at the tier's
    limit (the client may send gigabytes: they are never read, let alone stored)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise HTTPException(400, "expected a multipart/form-data upload")
    parts = _UploadParts(spool, limit)
    parser = MultipartParser(params[b"boundary"], parts.callbacks())
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit + FORM_OVERHEAD:
            raise UploadTooLarge()
        parser.write(chunk)
    parser.finalize()
    name, token = parts.name_and_token()
    if not name:
        raise HTTPException(400, "no file in the upload")
    spool.seek(0)
    return name, parts.written, token


def back_to(request: Request) -> str:
    """The page the form came from, if it is one of ours: only its path is used, and only when
    the Referer names this very site (no open redirect); else the user's annotations."""
    ref = urlsplit(request.headers.get("referer") or "")
    if ref.netloc == request.url.netloc and ref.path.startswith("/") and not ref.path.startswith("//"):
        return ref.path + (f"?{ref.query}" if ref.query else "")
    return "/annotations"


#: how users sign in: accounts with passwords (the default), an OpenID Connect provider
#: (``GAS_OIDC_*``), or choosing a name (``--dev``: the demo's mode, where anyone may be anyone)
SIGNIN_MODES = ("password", "oidc", "dev")


class Site:
    """What every route of one GAS web app shares: the deployment, who operates it, and the
    uploads being received."""

    def __init__(self, gas: gas_app.Gas, *, operators: tuple[str, ...], uploads: InFlight) -> None:
        self.gas, self.cfg, self.operators, self.uploads = gas, gas.config, operators, uploads

    def user(self, request: Request) -> dict[str, str]:
        u = request.session.get("user")
        if not u:
            raise HTTPException(401, "sign in first")
        prof = gas_app.profile(self.gas, u)
        if request.session.get("epoch", 0) != prof.get("session_epoch", 0):
            # signed out since this cookie was made (a copy of it kept elsewhere is dead too)
            request.session.clear()
            raise HTTPException(401, "signed out: sign in again")
        return {"name": u, "tier": prof["tier"], "csrf": request.session["csrf"],
                "operator": "yes" if u in self.operators else ""}

    def page_user(self, request: Request) -> dict[str, str] | None:
        try:
            return self.user(request)
        except HTTPException:
            return None

    @staticmethod
    def check_csrf(request: Request, token: str | None) -> None:
        expected = request.session.get("csrf", "")
        if not token or not expected or not hmac.compare_digest(token, expected):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")

    def render(self, request: Request, name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, name, {"user": self.page_user(request), **ctx},
                                          status_code=status_code)

    def limit(self, u: dict[str, str]) -> int:
        return self.cfg.free_limit_bytes if u["tier"] == "free" else PREMIUM_LIMIT_BYTES

    def own_job(self, u: dict[str, str], job_id: str) -> JobRecord:
        rec = self.gas.backend.store.get(job_id)
        if rec is None or rec.user_id != u["name"]:
            raise HTTPException(404, f"no job {job_id}")  # another user's job does not exist for you
        return rec

    def jobs(self, u: dict[str, str]) -> list[dict[str, Any]]:
        return [self.job_doc(r) for r in sorted(self.gas.backend.store.query(user_id=u["name"]),
                                                key=lambda r: r.created_at, reverse=True)]

    def job_doc(self, rec: JobRecord) -> dict[str, Any]:
        f, cfg = rec.fields, self.cfg
        archived = bool(f.get(cfg.attr("results_file_archive_id")))
        return {"job_id": rec.job_id, "status": rec.status.value, "input_file_name": f.get("input_file_name"),
                "submit_time": f.get("submit_time"), "complete_time": f.get(cfg.attr("complete_time")),
                "variants": f.get("variants"), "archived": archived,
                "result_available": bool(f.get(cfg.attr("s3_key_result_file"))) and not archived,
                "history": [{"at": h.at, "event": h.event, "stage": h.stage,
                             "to_status": h.to_status.value if h.to_status else None, "reason": h.reason}
                            for h in rec.history]}

    async def accept_upload(self, request: Request, u: dict[str, str], token_header: str | None) -> str:
        """Receive an upload within the user's tier limit and the server's in-flight cap, and
        submit it; the new job's id."""
        limit = self.limit(u)
        too_large = HTTPException(413, f"the file is larger than the {limit:,} bytes {u['tier']} users may upload"
                                  + (" (upgrade to premium for larger files)" if u["tier"] == "free" else ""))
        declared = int(request.headers.get("content-length") or 0)
        if declared > limit + FORM_OVERHEAD:
            raise too_large
        # what this upload may still bring: its declared length, or the tier's limit unsaid
        claim = declared or limit + FORM_OVERHEAD
        if not self.uploads.take(claim):
            raise HTTPException(503, f"the server is taking {self.uploads.cap:,} bytes of uploads already: try "
                                     "again in a minute", headers={"Retry-After": "30"})
        try:
            with tempfile.TemporaryFile(prefix="gas-upload-") as spool:
                try:
                    name, size, token = await read_upload(request, limit, spool)
                except UploadTooLarge:
                    raise too_large from None
                self.check_csrf(request, token_header or token)
                problem = name_problem(name) or (None if name.lower().endswith(".vcf")
                                                 else f"{name}: GAS annotates VCF files (.vcf)")
                if problem is not None:
                    raise HTTPException(400, problem)
                try:
                    return await run_in_threadpool(gas_app.submit_stream, self.gas, name, spool, size,
                                                   user_id=u["name"])
                except gas_app.GasError as exc:
                    raise HTTPException(413, str(exc)) from exc
        finally:
            self.uploads.give(claim)

    def download(self, u: dict[str, str], job_id: str, which: str) -> Response:
        rec, cfg = self.own_job(u, job_id), self.cfg
        key = rec.fields.get(cfg.attr("s3_key_result_file" if which == "result" else "s3_key_log_file"))
        if not key or (rec.fields.get(cfg.attr("results_file_archive_id")) and which == "result"):
            raise HTTPException(404, "no result file (not annotated yet, or archived: upgrade to restore)")
        store = self.gas.resources.results
        if store.presigns:
            return RedirectResponse(store.url(str(key), expires_s=300), status_code=303)  # presigned
        try:
            data = store.get(str(key))
        except ObjectNotFound:
            raise HTTPException(404, "the result file is not there") from None
        return Response(data, media_type="text/plain",
                        headers={"Content-Disposition": attachment(Path(str(key)).name.split("~")[-1])})


def create_app(gas: gas_app.Gas, *, secret: str | None = None, operators: tuple[str, ...] | None = None,
               ops_hashes: dict[str, str] | None = None, signin: str | None = None,
               upload_cap: int | None = None) -> FastAPI:
    """``operators``: who is shown the link to /ops (default: ``GAS_OPERATORS``, comma-separated, or
    admin); ``ops_hashes``: the dashboard's password hashes by role (default: from the environment);
    ``signin``: one of ``SIGNIN_MODES`` (default: ``GAS_SIGNIN``, or password); ``upload_cap``:
    the bytes of uploads taken at once (default: ``GAS_UPLOADS_IN_FLIGHT``)."""
    mode = signin or os.environ.get("GAS_SIGNIN") or "password"
    if mode not in SIGNIN_MODES:
        raise ConfigError(f"GAS_SIGNIN={mode!r}: expected one of {', '.join(SIGNIN_MODES)}")
    operators = operators or tuple(n.strip() for n in os.environ.get("GAS_OPERATORS", "admin").split(",") if n.strip())
    api = FastAPI(title="GAS", description="Genomics Annotation Service: submit VCF files, follow and download "
                  "their annotations.", version="1.0")
    api.add_middleware(SessionMiddleware, secret_key=secret or os.environ.get("GAS_WEB_SECRET") or
                       secrets.token_hex(32), same_site="strict",
                       https_only=os.environ.get("GAS_WEB_SECURE_COOKIE", "") not in ("", "0", "false"))
    api.add_middleware(SecurityHeaders)
    site = Site(gas, operators=operators, uploads=InFlight(upload_cap if upload_cap is not None else parse_size(
        os.environ.get("GAS_UPLOADS_IN_FLIGHT") or DEFAULT_UPLOADS_IN_FLIGHT, "GAS_UPLOADS_IN_FLIGHT")))

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)
        if exc.status_code == 401:
            return RedirectResponse("/signin", status_code=303)
        return site.render(request, "error.html", status_code=exc.status_code, message=exc.detail)

    add_api_routes(api, site)
    add_signin_routes(api, gas, mode, site.render, site.check_csrf)
    add_pages(api, site)
    # Operators get the orchestrator dashboard, mounted: the pipeline's stages, jobs with their
    # attempts and tracebacks, dead letters with a dry-run redrive. It signs in on its own, with
    # a password whose argon2 hash is in ORCHESTRATOR_WEB_OPERATOR_HASH (or _VIEWER_HASH).
    from orchestrator.web.app import create_app as dashboard
    from orchestrator.web.auth import hashes_from_env

    api.mount("/ops", dashboard(gas.pipeline, gas.backend, hashes=ops_hashes if ops_hashes is not None
                                else hashes_from_env()))
    return api


def add_api_routes(api: FastAPI, site: Site) -> None:
    """The JSON API, with its OpenAPI description."""
    User = Annotated[dict[str, str], Depends(site.user)]

    @api.get("/api/me", tags=["session"])
    def me(u: User) -> dict[str, str]:
        return {"user": u["name"], "tier": u["tier"]}

    @api.get("/api/jobs", tags=["jobs"])
    def list_jobs(u: User) -> list[dict[str, Any]]:
        return site.jobs(u)

    @api.get("/api/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str, u: User) -> dict[str, Any]:
        return site.job_doc(site.own_job(u, job_id))

    @api.post("/api/jobs", tags=["jobs"], status_code=201,
              description="multipart/form-data with `file` (a .vcf) and the CSRF token as `csrf` or the "
                          "`X-CSRF-Token` header")
    async def create_job(request: Request, u: User) -> dict[str, str]:
        return {"job_id": await site.accept_upload(request, u, request.headers.get("x-csrf-token"))}

    @api.get("/api/jobs/{job_id}/result", tags=["jobs"], response_class=Response)
    def get_result(job_id: str, u: User) -> Response:
        return site.download(u, job_id, "result")

    @api.get("/api/jobs/{job_id}/log", tags=["jobs"], response_class=Response)
    def get_log(job_id: str, u: User) -> Response:
        return site.download(u, job_id, "log")

    @api.post("/api/upgrade", tags=["session"])
    def api_upgrade(request: Request, u: User) -> dict[str, Any]:
        site.check_csrf(request, request.headers.get("x-csrf-token"))
        return {"tier": "premium", "restoring": gas_app.upgrade(site.gas, u["name"])}


def add_pages(api: FastAPI, site: Site) -> None:
    """The pages for people: my annotations, uploading, a job, upgrading."""
    User = Annotated[dict[str, str], Depends(site.user)]

    @api.get("/", include_in_schema=False)
    def home(request: Request) -> Response:
        return RedirectResponse("/annotations" if request.session.get("user") else "/signin", status_code=303)

    @api.get("/annotations", include_in_schema=False)
    def annotations(request: Request, u: User) -> HTMLResponse:
        return site.render(request, "annotations.html", jobs=site.jobs(u), limit=site.limit(u))

    @api.post("/annotations", include_in_schema=False)
    async def upload_page(request: Request, u: User) -> Response:
        try:
            job_id = await site.accept_upload(request, u, None)
        except HTTPException as exc:
            if exc.status_code in (400, 413, 503):
                return site.render(request, "annotations.html", status_code=exc.status_code, jobs=site.jobs(u),
                                   message=exc.detail, limit=site.limit(u))
            raise
        return RedirectResponse(f"/annotations/{job_id}", status_code=303)

    @api.get("/annotations/{job_id}", include_in_schema=False)
    def job_page(request: Request, job_id: str, u: User) -> HTMLResponse:
        return site.render(request, "job.html", job=site.job_doc(site.own_job(u, job_id)))

    @api.post("/upgrade", include_in_schema=False)
    def upgrade_page(request: Request, csrf: Annotated[str, Form()], u: User) -> Response:
        site.check_csrf(request, csrf)
        gas_app.upgrade(site.gas, u["name"])
        return RedirectResponse(back_to(request), status_code=303)


def serve(url: str, *, host: str = "127.0.0.1", port: int = 8000, signin: str | None = None) -> int:
    import uvicorn

    gas = gas_app.open_gas(url)
    gas_app.setup(gas)
    web = create_app(gas, signin=signin)
    print(f"GAS web front end on http://{host}:{port}/ (backend {gas.backend.url}); API: http://{host}:{port}/docs")
    uvicorn.run(web, host=host, port=port, log_level="warning")
    return 0
