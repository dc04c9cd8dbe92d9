"""A tiny OpenID Connect provider for the sign-in tests: discovery, an authorize endpoint that
signs in one configured user at once (no login page), a token endpoint issuing RS256 ID
tokens, and its keys. ``forge=True`` signs with a key it does not publish."""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import urlencode

from authlib.jose import JsonWebKey, jwt
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import RedirectResponse


def provider(*, client_id: str, client_secret: str, sub: str, email: str, forge: bool = False) -> FastAPI:
    app = FastAPI()
    key = JsonWebKey.generate_key("RSA", 2048, is_private=True, options={"kid": "k1"})
    signer = JsonWebKey.generate_key("RSA", 2048, is_private=True, options={"kid": "k1"}) if forge else key
    codes: dict[str, dict[str, Any]] = {}
    issuer: list[str] = []

    @app.get("/.well-known/openid-configuration")
    def discovery(request: Request) -> dict[str, Any]:
        base = str(request.base_url).rstrip("/")
        issuer[:] = [base]
        return {"issuer": base, "authorization_endpoint": f"{base}/authorize", "token_endpoint": f"{base}/token",
                "jwks_uri": f"{base}/jwks", "response_types_supported": ["code"],
                "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]}

    @app.get("/jwks")
    def jwks() -> dict[str, Any]:
        return {"keys": [key.as_dict(is_private=False)]}

    @app.get("/authorize")
    def authorize(request: Request) -> RedirectResponse:
        q = request.query_params
        if q.get("client_id") != client_id:
            raise HTTPException(400, "unknown client")
        code = secrets.token_urlsafe(16)
        codes[code] = {"nonce": q.get("nonce"), "redirect_uri": q.get("redirect_uri")}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q.get('state', '')})}",
                                status_code=302)

    @app.post("/token")
    def token(request: Request, code: str = Form(), redirect_uri: str = Form(),
              grant_type: str = Form()) -> dict[str, Any]:
        import base64

        auth = request.headers.get("authorization", "")
        given = base64.b64decode(auth.removeprefix("Basic ")).decode() if auth.startswith("Basic ") else ""
        if given != f"{client_id}:{client_secret}":
            raise HTTPException(401, "bad client credentials")
        grant = codes.pop(code, None)
        if grant is None or grant["redirect_uri"] != redirect_uri or grant_type != "authorization_code":
            raise HTTPException(400, "bad code")
        now = int(time.time())
        claims = {"iss": issuer[0], "sub": sub, "aud": client_id, "iat": now, "exp": now + 300,
                  "nonce": grant["nonce"], "email": email}
        id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, signer).decode()
        return {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300,
                "id_token": id_token}

    return app
