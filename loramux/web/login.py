"""The login form both servers' pages use: ``/ui/login`` and ``/ui/logout``.

The form posts the key once; the answer sets a cookie holding a server-side session id (see
``sessions``). A login from another site's page is refused (403): otherwise that page could
sign the browser in with the attacker's key (login CSRF) and read what the victim then types
into the playground. A form post from the site itself carries its own origin; clients with no
``Origin`` (curl, tests) pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from loramux.errors import LoramuxError
from loramux.web import Pages, clear_cookie, form_fields, safe_next, set_cookie
from loramux.web.sessions import Sessions

LOGIN = "/ui/login"


def same_origin(request: Request) -> bool:
    """No ``Origin``, or this site's own (scheme as uvicorn saw it, after trusted proxies)."""
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return origin is None or origin.lower() == own.lower()


@dataclass
class Login:
    """One app's login: its pages, cookie name, what the form asks for, and `check`, which
    turns a submitted secret into the credential a session keeps (raising a LoramuxError,
    whose message the form shows, when the secret is refused)."""

    pages: Pages
    cookie: str
    check: Callable[[str], str]
    what: str = "token"
    sessions: Sessions = field(default_factory=Sessions)

    def credential(self, request: Request) -> str | None:
        """The credential of the request's session cookie; None without a live session."""
        return self.sessions.credential(request.cookies.get(self.cookie))

    def has_cookie(self, request: Request) -> bool:
        return bool(request.cookies.get(self.cookie))

    def form(self, target: str, error: str | None = None) -> Response:
        return self.pages.login(LOGIN, target, error=error, what=self.what)

    def expired(self, target: str, error: str) -> Response:
        """The form again, for a cookie whose session ended or whose key was removed."""
        return clear_cookie(self.form(target, error), self.cookie)

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/ui", include_in_schema=False)

        @router.get("/login")
        async def login_form(next: str = "/ui") -> Response:
            return self.form(safe_next(next))

        @router.post("/login")
        async def login(request: Request) -> Response:
            if not same_origin(request):
                return self.pages.error(403, "sign in from this site's own login page")
            fields = await form_fields(request)
            secret, target = fields.get("token", "").strip(), safe_next(fields.get("next"))
            try:
                credential = self.check(secret)
            except LoramuxError as exc:
                return self.form(target, exc.message)
            session = self.sessions.open(credential)
            return set_cookie(RedirectResponse(target, status_code=303), request, self.cookie,
                              session)

        @router.post("/logout")
        async def logout(request: Request) -> Response:
            if not same_origin(request):
                return self.pages.error(403, "sign out from this site's own pages")
            self.sessions.close(request.cookies.get(self.cookie))
            return clear_cookie(RedirectResponse(LOGIN, status_code=303), self.cookie)

        return router
