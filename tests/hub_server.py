"""A local stand-in for the Hugging Face Hub: the endpoints huggingface_hub 2.4 calls for
``neuro-scan fetch`` and ``publish``, served from memory on 127.0.0.1.

Point ``HF_ENDPOINT`` at :attr:`LocalHub.url` and the real client talks to it:

* ``HEAD``/``GET /datasets/{org}/{name}/resolve/{revision}/{path}`` (``hf_hub_download``): the file,
  with the ``X-Repo-Commit`` and ``ETag`` headers the client requires;
* ``POST /api/datasets/{org}/{name}/preupload/{revision}``: every file is uploaded "regular"
  (inline in the commit, no LFS);
* ``POST /api/datasets/{org}/{name}/commit/{revision}[?create_pr=1]``: the NDJSON commit, applied
  to main or to a new ``refs/pr/N`` branch, and recorded in :attr:`LocalHub.commits`.

Errors carry the Hub's ``X-Error-Code`` header (RepoNotFound, EntryNotFound, RevisionNotFound),
from which huggingface_hub raises its own exception classes. Uploads need ``Authorization:
Bearer <token>`` when the hub has a token. The server binds 127.0.0.1 only and shuts itself down
after ``lifetime`` seconds, so a stuck test cannot leave it running.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Commit:
    """One commit received by the commit endpoint."""

    repo_id: str
    revision: str  # the branch it was applied to: "main" or "refs/pr/N"
    pull_request: bool
    summary: str
    description: str
    files: dict[str, bytes]
    authorization: str | None


@dataclass
class Dataset:
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    heads: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    pull_requests: int = 0


def _sha(*parts: bytes) -> str:
    return hashlib.sha1(b"\0".join(parts)).hexdigest()


class LocalHub:
    def __init__(self, token: str | None = None, lifetime: float = 600.0):
        self.token = token
        self.datasets: dict[str, Dataset] = {}
        self.commits: list[Commit] = []
        self.requests: list[str] = []  # "METHOD /path", in order
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True
        self._stopped = False

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port: later connections are refused."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------- content

    def add_dataset(self, repo_id: str, files: dict[str, bytes] | None = None) -> None:
        with self._lock:
            self.datasets[repo_id] = Dataset()
            self._apply(repo_id, "main", files or {}, "initial commit")

    def put(self, repo_id: str, path: str, content: bytes) -> None:
        """Commit one file to main (a test's setup, not through the API)."""
        with self._lock:
            self._apply(repo_id, "main", {path: content}, f"put {path}")

    def file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        return self.datasets[repo_id].branches[revision][path]

    def _apply(self, repo_id: str, branch: str, files: dict[str, bytes], summary: str) -> str:
        dataset = self.datasets[repo_id]
        dataset.branches.setdefault(branch, {}).update(files)
        parent = dataset.heads.get(branch, "").encode()
        dataset.heads[branch] = _sha(parent, summary.encode(), *(p.encode() + c for p, c in sorted(files.items())))
        return dataset.heads[branch]

    # ------------------------------------------------------------------------------ requests

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_HEAD(self) -> None:
                hub._resolve(self, send_body=False)

            def do_GET(self) -> None:
                hub._resolve(self, send_body=True)

            def do_POST(self) -> None:
                hub._post(self)

        return Handler

    def _record(self, request: BaseHTTPRequestHandler) -> list[str]:
        with self._lock:
            self.requests.append(f"{request.command} {request.path}")
        return [unquote(part) for part in urlsplit(request.path).path.strip("/").split("/")]

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
               send_body: bool = True) -> None:
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if send_body:
            request.wfile.write(body)

    def _error(self, request: BaseHTTPRequestHandler, status: int, code: str | None, message: str,
               extra: dict[str, str] | None = None, send_body: bool = True) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._reply(request, status, json.dumps({"error": message}).encode(), headers, send_body)

    def _resolve(self, request: BaseHTTPRequestHandler, send_body: bool) -> None:
        parts = self._record(request)
        # datasets/{org}/{name}/resolve/{revision}/{path...}
        if len(parts) < 6 or parts[0] != "datasets" or parts[3] != "resolve":
            return self._error(request, 404, None, "not an endpoint of this local hub", send_body=send_body)
        repo_id, revision, path = f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:])
        with self._lock:
            dataset = self.datasets.get(repo_id)
            branch = dataset.branches.get(revision) if dataset is not None else None
            commit = dataset.heads.get(revision) if dataset is not None else None
            content = branch.get(path) if branch is not None else None
        if dataset is None:
            return self._error(request, 404, "RepoNotFound", "Repository not found", send_body=send_body)
        if branch is None:
            return self._error(request, 404, "RevisionNotFound", "Invalid rev id", send_body=send_body)
        if content is None:
            return self._error(request, 404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit}, send_body)
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": commit,
                   "ETag": f'"{_sha(b"blob", content)}"'}
        self._reply(request, 200, content, headers, send_body)

    def _post(self, request: BaseHTTPRequestHandler) -> None:
        parts = self._record(request)
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        # api/datasets/{org}/{name}/{preupload|commit}/{revision}
        if len(parts) != 6 or parts[:2] != ["api", "datasets"] or parts[4] not in ("preupload", "commit"):
            return self._error(request, 404, None, "not an endpoint of this local hub")
        repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], parts[5]
        authorization = request.headers.get("Authorization")
        if self.token is not None and authorization != f"Bearer {self.token}":
            return self._error(request, 401, None, "Invalid credentials in Authorization header")
        with self._lock:
            dataset = self.datasets.get(repo_id)
            known_revision = dataset is not None and revision in dataset.branches
        if dataset is None:
            return self._error(request, 404, "RepoNotFound", "Repository not found")
        if not known_revision:
            return self._error(request, 404, "RevisionNotFound", "Invalid rev id")
        if action == "preupload":
            files = json.loads(body)["files"]
            answer = {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                for f in files]}
            return self._reply(request, 200, json.dumps(answer).encode(), {"Content-Type": "application/json"})
        self._commit(request, repo_id, revision, body, authorization)

    def _commit(self, request: BaseHTTPRequestHandler, repo_id: str, revision: str, body: bytes,
                authorization: str | None) -> None:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files: dict[str, bytes] = {}
        for line in lines:
            if line["key"] != "file":  # this stand-in only takes inline files (no LFS, no deletions)
                continue
            value = line["value"]
            files[value["path"]] = base64.b64decode(value["content"]) if value.get("encoding") == "base64" \
                else value["content"].encode()
        pull_request = parse_qs(urlsplit(request.path).query).get("create_pr") == ["1"]
        with self._lock:
            dataset = self.datasets[repo_id]
            branch = revision
            if pull_request:
                dataset.pull_requests += 1
                branch = f"refs/pr/{dataset.pull_requests}"
                dataset.branches[branch] = dict(dataset.branches[revision])
                dataset.heads[branch] = dataset.heads[revision]
            sha = self._apply(repo_id, branch, files, header["summary"])
            self.commits.append(Commit(repo_id, branch, pull_request, header["summary"], header.get("description", ""),
                                       files, authorization))
            number = dataset.pull_requests
        answer = {"commitUrl": f"{self.url}/datasets/{repo_id}/commit/{sha}", "commitOid": sha,
                  "pullRequestUrl": f"{self.url}/datasets/{repo_id}/discussions/{number}" if pull_request else None}
        self._reply(request, 200, json.dumps(answer).encode(), {"Content-Type": "application/json"})
