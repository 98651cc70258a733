"""A Hugging Face Hub-compatible HTTP endpoint on loopback, for tests with no internet.

This is a protocol fixture, not a mock of loramux: the real ``huggingface_hub`` client talks to
it over real HTTP (``HF_ENDPOINT=http://127.0.0.1:PORT``), so what passes here is what the
client sends and expects from huggingface.co. It speaks the routes that ``snapshot_download``,
``hf_hub_download``, ``model_info``, ``create_repo`` and ``upload_folder`` use, for model repos:

- ``GET  /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: model info, with the
  resolved commit ``sha`` and the ``siblings``;
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]``: the file listing (one page);
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: a file, with ``X-Repo-Commit`` and the git blob
  id as ``ETag`` (files are stored as regular git blobs, never LFS or Xet);
- ``POST /api/repos/create``, ``POST /api/validate-yaml`` (a model card's metadata),
  ``POST /api/models/{repo}/preupload/{rev}`` (every file "regular") and
  ``POST /api/models/{repo}/commit/{rev}`` (NDJSON, base64 contents).

Revisions are branches, tags or full 40-hex commit ids. Auth mirrors the Hub: a private repo or
a write needs ``Authorization: Bearer <token>`` from ``tokens``; a missing or wrong token on a
private repo answers 401 like huggingface.co. ``fail_with`` makes every route answer that status
(an outage). Repos live in memory; :meth:`HubServer.commit` seeds them directly.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loramux.support.ports import InProcessServer


def git_blob_id(data: bytes) -> str:
    """The id git (and the Hub, as a regular file's ETag) gives these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit id

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


@dataclass
class HubServer:
    """The endpoint's state; :func:`running_hub` serves it."""

    tokens: set[str] = field(default_factory=set)
    repos: dict[str, Repo] = field(default_factory=dict)
    fail_with: int | None = None
    requests: list[str] = field(default_factory=list)
    url: str = ""

    def commit(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main",
               tag: str | None = None, private: bool = False, replace: bool = True) -> str:
        """Seed a commit on ``branch`` (its files replace the tree unless ``replace`` is False)."""
        repo = self.repos.setdefault(repo_id, Repo(private=private))
        parent = repo.refs.get(branch)
        tree = {} if replace or parent is None else dict(repo.commits[parent])
        tree.update(files)
        seed = json.dumps([parent, sorted((p, git_blob_id(b)) for p, b in tree.items())])
        sha = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[sha] = tree
        repo.refs[branch] = sha
        if tag is not None:
            repo.refs[tag] = sha
        return sha

    # -- routes ------------------------------------------------------------------------------

    def _error(self, status: int, message: str, code: str | None = None) -> Response:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and header[7:] in self.tokens

    def _repo(self, request: Request, repo_id: str) -> Repo | Response:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized(request)):
            # The Hub answers 401 (not 404) so as not to tell a private repo exists.
            return self._error(401, "Repository Not Found", "RepoNotFound")
        return repo

    def _commit_of(self, repo: Repo, revision: str) -> str | Response:
        sha = repo.resolve(revision)
        if sha is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    def _revision(self, request: Request) -> tuple[str, Repo, str] | Response:
        """(repo id, repo, commit) the route's repo and revision name, or the Hub's refusal."""
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        repo = self._repo(request, repo_id)
        if isinstance(repo, Response):
            return repo
        sha = self._commit_of(repo, request.path_params.get("rev", "main"))
        if isinstance(sha, Response):
            return sha
        return repo_id, repo, sha

    async def model_info(self, request: Request) -> Response:
        found = self._revision(request)
        if isinstance(found, Response):
            return found
        repo_id, repo, sha = found
        files = repo.commits[sha]
        return JSONResponse({
            "id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
            "tags": [], "downloads": 0, "likes": 0,
            "siblings": [{"rfilename": path} for path in sorted(files)],
        })

    async def tree(self, request: Request) -> Response:
        found = self._revision(request)
        if isinstance(found, Response):
            return found
        _, repo, sha = found
        prefix = request.path_params.get("path", "").strip("/")
        entries = [
            {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
            for path, data in sorted(repo.commits[sha].items())
            if not prefix or path.startswith(prefix + "/")
        ]
        return JSONResponse(entries)

    async def resolve(self, request: Request) -> Response:
        found = self._revision(request)
        if isinstance(found, Response):
            return found
        _, repo, sha = found
        data = repo.commits[sha].get(request.path_params["path"])
        if data is None:
            return self._error(404, "Entry not found", "EntryNotFound")
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_id(data)}"',
                   "Content-Length": str(len(data))}
        body = b"" if request.method == "HEAD" else data
        return Response(body, headers=headers, media_type="application/octet-stream")

    async def create_repo(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, "Invalid credentials in Authorization header")
        body = await request.json()
        org = body.get("organization")
        repo_id = f"{org}/{body['name']}" if org else body["name"]
        if "/" not in repo_id:
            repo_id = f"user/{repo_id}"
        if repo_id in self.repos:
            return self._error(409, "You already created this model repo")
        # huggingface_hub 2 sends "visibility"; older clients sent "private".
        private = body.get("visibility") == "private" or bool(body.get("private"))
        self.repos[repo_id] = Repo(private=private)
        return JSONResponse({"url": f"{self.url}/{repo_id}", "name": repo_id})

    async def preupload(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, "Invalid credentials in Authorization header")
        body = await request.json()
        return JSONResponse({"files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
            for f in body.get("files", [])
        ]})

    async def commit_route(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, "Invalid credentials in Authorization header")
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        if repo_id not in self.repos:
            return self._error(404, "Repository Not Found", "RepoNotFound")
        files: dict[str, bytes] = {}
        for line in (await request.body()).splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item["key"] == "file":
                value = item["value"]
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] in ("lfsFile", "deletedFile", "deletedFolder", "copyFile"):
                return self._error(400, f"this fixture stores regular files only: {item['key']}")
        sha = self.commit(repo_id, files, branch=request.path_params["rev"], replace=False,
                          private=self.repos[repo_id].private)
        return JSONResponse({"commitUrl": f"{self.url}/{repo_id}/commit/{sha}",
                             "commitOid": sha, "success": True})

    async def validate_yaml(self, request: Request) -> Response:
        """The model card's metadata: YAML front matter that parses to a mapping, as the Hub
        checks before a README.md is committed."""
        import yaml

        content = (await request.json()).get("content", "")
        errors = []
        if content.startswith("---"):
            try:
                meta = yaml.safe_load(content.split("---", 2)[1])
                if not isinstance(meta, dict):
                    errors.append({"message": "metadata must be a YAML mapping"})
            except (yaml.YAMLError, IndexError) as exc:
                errors.append({"message": f"invalid YAML: {exc}"})
        return JSONResponse({"errors": errors, "warnings": []}, status_code=400 if errors else 200)

    def app(self) -> Starlette:
        hub = self

        async def gate(scope, receive, send):  # type: ignore[no-untyped-def]
            if scope["type"] == "http":
                hub.requests.append(f"{scope['method']} {scope['path']}")
                if hub.fail_with is not None:
                    await hub._error(hub.fail_with, "the fixture is failing on purpose")(
                        scope, receive, send)
                    return
            await inner(scope, receive, send)

        repo = "{org}/{name}"
        inner = Starlette(routes=[
            Route("/api/repos/create", self.create_repo, methods=["POST"]),
            Route("/api/validate-yaml", self.validate_yaml, methods=["POST"]),
            Route(f"/api/models/{repo}/preupload/{{rev}}", self.preupload, methods=["POST"]),
            Route(f"/api/models/{repo}/commit/{{rev}}", self.commit_route, methods=["POST"]),
            Route(f"/api/models/{repo}/tree/{{rev}}", self.tree),
            Route(f"/api/models/{repo}/tree/{{rev}}/{{path:path}}", self.tree),
            Route(f"/api/models/{repo}/revision/{{rev}}", self.model_info),
            Route(f"/api/models/{repo}", self.model_info),
            Route(f"/{repo}/resolve/{{rev}}/{{path:path}}", self.resolve, methods=["GET", "HEAD"]),
        ])
        return gate  # type: ignore[return-value]


@contextmanager
def running_hub(hub: HubServer | None = None) -> Iterator[HubServer]:
    """Serve ``hub`` on a free loopback port (uvicorn in a thread) for the ``with`` block."""
    import uvicorn

    hub = hub or HubServer()
    server = InProcessServer(uvicorn.Config(hub.app(), host="127.0.0.1", port=0,
                                            log_level="warning"))
    hub.url = server.url
    try:
        yield hub
    finally:
        server.stop()
