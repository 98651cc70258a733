"""What both web pages (the registry's and the server's ``/ui``) share: templates, the login
cookie, the security headers and the static files.

A browser cannot send a bearer header on a link or a form, so a small login form
(``login.py``) opens a server-side session (``sessions.py``) and puts its id in an HttpOnly,
SameSite=Strict cookie whose path is ``/ui``: scripts cannot read it, other sites cannot make
the browser send it, and the API routes never see it (they read the ``Authorization`` header
only, so the cookie grants nothing outside the pages). ``front.py`` is the request check both
servers run first, ``serving.py`` their uvicorn limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
MAX_FORM_BYTES = 4096  # a login form: one token and where to go next
COOKIE_PATH = "/ui"
# Everything from this origin; no inline script, no framing. `data:` images for the favicon.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Pages:
    """One app's templates (its own folder first, then the shared layout and login form)."""

    def __init__(self, title: str, *folders: Path) -> None:
        self.title = title
        self.env = Environment(
            loader=ChoiceLoader([FileSystemLoader(str(f)) for f in (*folders, HERE / "templates")]),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True, lstrip_blocks=True,
        )

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(site=self.title, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def error(self, status: int, message: str, **context: Any) -> HTMLResponse:
        return self.render("error.html", status=status, message=message, **context)

    def login(self, action: str, next_url: str, error: str | None = None,
              what: str = "token") -> HTMLResponse:
        return self.render("login.html", status=401 if error else 200, action=action,
                           next_url=next_url, error=error, what=what, user=None)


def mount_static(app: FastAPI, path: str = "/ui/static", folder: Path = STATIC) -> None:
    """Public files the pages load (CSS, the playground's script): nothing secret in them."""
    app.mount(path, StaticFiles(directory=str(folder)), name=f"ui{path.replace('/', '-')}")


def safe_next(value: str | None) -> str:
    """Where to go after login: a path under /ui on this site, never elsewhere."""
    if value and value.startswith(COOKIE_PATH) and not value.startswith("//") \
            and "\\" not in value and "\n" not in value and "\r" not in value:
        return value
    return COOKIE_PATH


def login_redirect(request: Request, login_path: str) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    from urllib.parse import quote

    return RedirectResponse(f"{login_path}?next={quote(safe_next(target))}", status_code=303)


async def form_fields(request: Request) -> dict[str, str]:
    """A small urlencoded form's fields (first value each); a larger body is cut off."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items()}


def set_cookie(response: Response, request: Request, name: str, secret: str) -> Response:
    response.set_cookie(name, secret, path=COOKIE_PATH, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


def clear_cookie(response: Response, name: str) -> Response:
    response.delete_cookie(name, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response
