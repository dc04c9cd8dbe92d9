"""How users sign in to the GAS web front end: accounts with passwords (the default), an
OpenID Connect provider, or choosing a name (``--dev``); sign-up and sign-out.

Sessions are signed cookies; each carries the user's session epoch, which sign-out (and a new
password) moves on, so every copy of an older cookie is refused by every web process.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from examples.gas import app as gas_app
from orchestrator.errors import ConfigError

Render = Callable[..., HTMLResponse]


class SignIn:
    """What the sign-in routes share: the deployment, the mode, and how pages are drawn."""

    def __init__(self, gas: gas_app.Gas, mode: str, render: Render) -> None:
        self.gas, self.mode, self.render = gas, mode, render

    @staticmethod
    def start_session(request: Request, prof: dict[str, Any]) -> Response:
        request.session.clear()
        # a new token per session; the epoch ties the cookie to the sessions not yet signed out
        request.session.update(user=prof["user_id"], csrf=secrets.token_urlsafe(24),
                               epoch=prof.get("session_epoch", 0))
        return RedirectResponse("/annotations", status_code=303)

    def form(self, request: Request, status_code: int = 200, message: str | None = None,
             page: str = "signin.html") -> HTMLResponse:
        request.session.setdefault("csrf", secrets.token_urlsafe(24))
        return self.render(request, page, status_code=status_code, csrf=request.session["csrf"], mode=self.mode,
                           message=message, min_password=gas_app.MIN_PASSWORD)

    def by_password(self, request: Request, name: str, password: str) -> Response:
        prof = gas_app.check_password(self.gas, name, password)
        if prof is None:
            return self.form(request, 401, "wrong name or password")
        return self.start_session(request, prof)

    def by_name(self, request: Request, name: str, tier: str, email: str) -> Response:
        """The demo's sign-in (``--dev``): whoever you say you are."""
        problem = gas_app.user_name_problem(name)
        if problem is not None:
            return self.form(request, 400, problem)
        prof = gas_app.profile(self.gas, name)
        if tier == "premium" and prof["tier"] != "premium":
            gas_app.upgrade(self.gas, name)
        prof = gas_app.profile(self.gas, name)
        prof["email"] = email.strip() or prof.get("email") or f"{name}@users.example.org"
        gas_app.save_profile(self.gas, prof)
        return self.start_session(request, prof)

    def by_provider(self, request: Request, claims: dict[str, Any]) -> Response:
        """Sign in the user an OpenID Connect provider vouched for (its checked ID token's claims)."""
        sub = str(claims.get("sub") or "")
        if not sub:
            return self.form(request, 401, "the identity provider named no user")
        # the provider's subject is the user id (stable, unique at the issuer; what GAS web apps
        # keep), hashed where it is not a name GAS can use in keys
        name = sub if gas_app.user_name_problem(sub) is None else "oidc-" + hashlib.sha256(sub.encode()).hexdigest()[:24]
        prof = gas_app.profile(self.gas, name)
        if claims.get("email"):
            prof["email"] = str(claims["email"])
        gas_app.save_profile(self.gas, prof)
        return self.start_session(request, prof)

    def sign_out(self, request: Request) -> Response:
        name = request.session.get("user")
        if name:
            # Sessions are signed cookies: clearing ours would leave a copy of the old cookie
            # valid. The user's epoch moves on instead, so every cookie made before is refused
            # (by every web process: the epoch lives with the profile, not in one process).
            prof = gas_app.profile(self.gas, name)
            prof["session_epoch"] = int(prof.get("session_epoch", 0)) + 1
            gas_app.save_profile(self.gas, prof)
        request.session.clear()
        return RedirectResponse("/signin", status_code=303)


def add_signin_routes(api: FastAPI, gas: gas_app.Gas, mode: str, render: Render,
                      check_csrf: Callable[[Request, str | None], None]) -> None:
    """/signin (and its OpenID Connect callback), /signup and /signout, for ``mode``."""
    si = SignIn(gas, mode, render)

    @api.get("/signin", include_in_schema=False)
    def signin_page(request: Request) -> HTMLResponse:
        return si.form(request)

    @api.post("/signin", include_in_schema=False)
    def signin(request: Request, name: Annotated[str, Form()], csrf: Annotated[str, Form()],
               password: Annotated[str, Form()] = "", tier: Annotated[str, Form()] = "free",
               email: Annotated[str, Form()] = "") -> Response:
        check_csrf(request, csrf)
        if mode == "password":
            return si.by_password(request, name.strip(), password)
        return si.by_name(request, name.strip(), tier, email)

    @api.post("/signout", include_in_schema=False)
    def signout(request: Request, csrf: Annotated[str, Form()]) -> Response:
        check_csrf(request, csrf)
        return si.sign_out(request)

    _add_oidc_routes(api, si)
    _add_signup_routes(api, si, check_csrf)


def _add_oidc_routes(api: FastAPI, si: SignIn) -> None:
    oidc = _oidc_client() if si.mode == "oidc" else None

    @api.get("/signin/oidc", include_in_schema=False)
    async def oidc_start(request: Request) -> Response:
        if oidc is None:
            raise HTTPException(404, "OpenID Connect sign-in is not used here")
        return await oidc.authorize_redirect(request, str(request.url_for("oidc_callback")))  # type: ignore[no-any-return]

    @api.get("/signin/oidc/callback", include_in_schema=False, name="oidc_callback")
    async def oidc_callback(request: Request) -> Response:
        if oidc is None:
            raise HTTPException(404, "OpenID Connect sign-in is not used here")
        from authlib.integrations.base_client.errors import OAuthError

        try:
            # the code for tokens; the ID token's signature (the issuer's keys), issuer,
            # audience, expiry and nonce are checked by authlib
            token = await oidc.authorize_access_token(request)
        except OAuthError as exc:
            return si.form(request, 401, f"the identity provider refused: {exc.description or exc.error}")
        except Exception as exc:  # a token that fails its checks (signature, claims): nobody signs in
            return si.form(request, 401, f"the identity provider's answer was refused ({type(exc).__name__})")
        return si.by_provider(request, token.get("userinfo") or {})


def _add_signup_routes(api: FastAPI, si: SignIn, check_csrf: Callable[[Request, str | None], None]) -> None:
    @api.get("/signup", include_in_schema=False)
    def signup_page(request: Request) -> HTMLResponse:
        if si.mode != "password":
            raise HTTPException(404, "accounts are not used here")
        return si.form(request, page="signup.html")

    @api.post("/signup", include_in_schema=False)
    def signup(request: Request, name: Annotated[str, Form()], password: Annotated[str, Form()],
               csrf: Annotated[str, Form()], email: Annotated[str, Form()] = "") -> Response:
        check_csrf(request, csrf)
        if si.mode != "password":
            raise HTTPException(404, "accounts are not used here")
        try:
            prof = gas_app.add_account(si.gas, name.strip(), password, email=email.strip() or None, new_only=True)
        except gas_app.GasError as exc:
            return si.form(request, 400, str(exc), page="signup.html")
        return si.start_session(request, prof)


def _oidc_client() -> Any:
    """The OpenID Connect client (authlib) for ``GAS_OIDC_ISSUER``: its endpoints and keys come
    from the issuer's discovery document."""
    from authlib.integrations.starlette_client import OAuth

    missing = [v for v in ("GAS_OIDC_ISSUER", "GAS_OIDC_CLIENT_ID", "GAS_OIDC_CLIENT_SECRET") if not os.environ.get(v)]
    if missing:
        raise ConfigError(f"GAS_SIGNIN=oidc needs {', '.join(missing)}")
    issuer = os.environ["GAS_OIDC_ISSUER"].rstrip("/")
    oauth = OAuth()
    oauth.register("oidc", server_metadata_url=f"{issuer}/.well-known/openid-configuration",
                   client_id=os.environ["GAS_OIDC_CLIENT_ID"], client_secret=os.environ["GAS_OIDC_CLIENT_SECRET"],
                   client_kwargs={"scope": os.environ.get("GAS_OIDC_SCOPE") or "openid email profile"})
    return oauth.create_client("oidc")
