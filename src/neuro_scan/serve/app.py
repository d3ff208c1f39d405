"""The web app: routes, the guard in front of them, the live event stream, and :func:`serve`.

Routes (JSON unless said otherwise; errors are ``{"error": one line}`` with a 4xx status):

- ``GET /``: the page; ``GET /static/NAME``: its script, style and plotly.min.js;
- ``GET /api/commands``: the forms of the scanning commands, the built-in probes, the models
  found in the Hugging Face cache;
- ``GET /api/reports``: every report under the results folder; ``GET /api/report?path=``: one;
- ``GET /files/PATH``: a file of the results folder (dashboards, their pages and data);
- ``POST /api/probe-check?name=``: an uploaded probe file (the body) checked as the CLI checks it;
- ``GET /api/jobs``, ``GET /api/jobs/ID``, ``POST /api/jobs`` (``{"command", "options",
  "probe_file": {"name", "text"}}``), ``POST /api/jobs/ID/cancel``, ``POST /api/jobs/ID/resume``
  (an interrupted, cancelled or failed job with a journal, queued again in its folder: :meth:`Jobs.resume`);
  a job comes with ``resumable``;
- ``GET /api/jobs/ID/events``: the job's events as server-sent events, from the first (or after
  ``Last-Event-ID``) to its end (an Ended line that nothing follows); ``GET /api/jobs/ID/report``: its
  main report as written so far (``null`` while there is none).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import socket
import threading
import webbrowser
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path

from neuro_scan.errors import UsageError
from neuro_scan.serve import forms
from neuro_scan.serve.catalog import Catalog
from neuro_scan.serve.jobs import ENDED_PREFIX, Job, Jobs
from neuro_scan.serve.settings import (TOKEN_COOKIE, TOKEN_HEADER, TOKEN_QUERY, Refused, Settings, check_host,
                                       check_token, confine, make_settings)
from neuro_scan.serve.worker import EVENTS_FILE

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import Headers, QueryParams
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError:  # pragma: no cover - the CLI says what to install
    raise UsageError("serve: the web app needs its extra: pip install 'neuro-scan[serve]'") from None

POLL_SECONDS = 0.1  # how often a stream looks for new events
KEEP_ALIVE_SECONDS = 15
MAX_BODY = 2 * forms.MAX_PROBE_BYTES + 65536  # a job request with its probe file as JSON text
STATIC = resources.files("neuro_scan.serve") / "static"


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


class Guard:
    """ASGI middleware: the host and token checks of :mod:`.settings` before any route, and refused
    requests answered with their one line. A token given as ``?token=`` is kept in a cookie."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        query = QueryParams(scope.get("query_string", b"")).get(TOKEN_QUERY)
        cookies = Request(scope).cookies
        try:
            check_host(self.settings, headers.get("host"))
            check_token(self.settings, scope["method"], headers.get(TOKEN_HEADER), query, cookies.get(TOKEN_COOKIE))
        except Refused as refused:
            return await error(refused.status, str(refused))(scope, receive, send)
        if query is None or cookies.get(TOKEN_COOKIE) == query:
            return await self.app(scope, receive, send)

        async def with_cookie(message) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={query}; Path=/; HttpOnly; SameSite=Strict"
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
            await send(message)

        await self.app(scope, receive, with_cookie)


def create_app(settings: Settings) -> Guard:
    jobs = Jobs(settings.results)
    catalog = Catalog(settings.results)

    @contextlib.asynccontextmanager
    async def lifespan(_app) -> AsyncIterator[None]:
        jobs.open()
        try:
            yield
        finally:
            await run_in_threadpool(jobs.close)

    def answers(handler: Callable) -> Callable:
        """A route whose bad input (UsageError, Refused) is a 4xx with its one line."""

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Refused as refused:
                return error(refused.status, str(refused))
            except UsageError as bad:
                return error(400, str(bad))

        return route

    async def page(_request: Request) -> Response:
        text = (STATIC / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(text.replace("{{token}}", html.escape(settings.token)), headers={"cache-control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "plotly.min.js":
            from neuro_scan.report.charts import plotly_js

            return Response(plotly_js()[name], media_type="text/javascript")
        if name not in ("app.js", "style.css"):
            raise Refused(404, f"no static file '{name}'")
        return Response((STATIC / name).read_bytes(), media_type="text/javascript" if name.endswith(".js") else "text/css")

    async def commands(_request: Request) -> Response:
        from neuro_scan.probes import builtin_probe_names, load_builtin

        probes = [load_builtin(name) for name in builtin_probe_names()]
        return JSONResponse({
            "commands": [forms.form(spec) for spec in forms.scans()],
            "probes": [{"name": p.name, "group": p.group, "samples": len(p.samples), "description": p.description}
                       for p in probes],
            "models": ["demo", *await run_in_threadpool(forms.cached_models)],
        })

    async def reports(_request: Request) -> Response:
        return JSONResponse([asdict(entry) for entry in await run_in_threadpool(catalog.reports)])

    async def report(request: Request) -> Response:
        entry, read = await run_in_threadpool(catalog.report, request.query_params.get("path", ""))
        rows = [{"layer": row.layer, "score_delta": row.score_delta, "ci": row.ci, "label": row.label}
                for row in read.rows]
        return JSONResponse({**asdict(entry), "rows": rows})

    async def files(request: Request) -> Response:
        path = confine(settings.results, request.path_params["path"])
        if not path.is_file():
            raise Refused(404, f"no file '{request.path_params['path']}' in the results folder")
        return FileResponse(path, headers={"cache-control": "no-store"})

    async def probe_check(request: Request) -> Response:
        data = await _body(request, forms.MAX_PROBE_BYTES)
        probe = await run_in_threadpool(forms.check_probe, request.query_params.get("name", ""), data)
        return JSONResponse({"name": probe.name, "samples": len(probe.samples), "answer_type": probe.answer_type})

    def described(job: Job) -> dict:
        return {**asdict(job), "resumable": jobs.resumable(job)}

    async def list_jobs(_request: Request) -> Response:
        return JSONResponse([described(job) for job in jobs.list()])

    async def get_job(request: Request) -> Response:
        return JSONResponse(described(jobs.get(request.path_params["id"])))

    async def start_job(request: Request) -> Response:
        try:
            body = json.loads(await _body(request, MAX_BODY))
            name, values, upload = body["command"], body.get("options") or {}, body.get("probe_file")
            probe = None if upload is None else (str(upload["name"]), str(upload["text"]).encode("utf-8"))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise Refused(400, 'give a JSON object {"command": ..., "options": {...}, "probe_file": null or '
                               '{"name": ..., "text": ...}}') from None
        if not isinstance(name, str) or not isinstance(values, dict):
            raise Refused(400, "'command' must be a command's name and 'options' an object")
        job = await run_in_threadpool(jobs.submit, name, values, probe)
        return JSONResponse(described(job), 201)

    async def cancel_job(request: Request) -> Response:
        return JSONResponse(described(jobs.cancel(request.path_params["id"])))

    async def resume_job(request: Request) -> Response:
        return JSONResponse(described(await run_in_threadpool(jobs.resume, request.path_params["id"])))

    async def job_report(request: Request) -> Response:
        job = jobs.get(request.path_params["id"])
        prefix = f"jobs/{job.id}/"
        found = [e for e in await run_in_threadpool(catalog.reports) if e.path.startswith(prefix) and e.command == job.command]
        if not found:  # none yet, or none the reader reads (a head ablation's components.json): nothing to draw
            return JSONResponse(None, headers={"cache-control": "no-store"})
        main = min(found, key=lambda e: e.dashboard is None)  # the document with a page of its own
        return FileResponse(confine(settings.results, main.path), headers={"cache-control": "no-store"})

    async def job_events(request: Request) -> Response:
        job = jobs.get(request.path_params["id"])
        after = request.headers.get("last-event-id") or request.query_params.get("after") or "-1"
        if not after.lstrip("-").isdecimal():
            raise Refused(400, f"'after' must be an event number, got '{after}'")
        stream = _event_stream(jobs.folder(job) / EVENTS_FILE, int(after))
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    routes = [
        Route("/", page), Route("/static/{name}", answers(static)), Route("/api/commands", answers(commands)),
        Route("/api/reports", answers(reports)), Route("/api/report", answers(report)),
        Route("/files/{path:path}", answers(files)), Route("/api/probe-check", answers(probe_check), methods=["POST"]),
        Route("/api/jobs", answers(list_jobs)), Route("/api/jobs", answers(start_job), methods=["POST"]),
        Route("/api/jobs/{id}", answers(get_job)), Route("/api/jobs/{id}/cancel", answers(cancel_job), methods=["POST"]),
        Route("/api/jobs/{id}/resume", answers(resume_job), methods=["POST"]),
        Route("/api/jobs/{id}/events", answers(job_events)), Route("/api/jobs/{id}/report", answers(job_report)),
    ]
    return Guard(Starlette(routes=routes, lifespan=lifespan), settings)


async def _body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) beyond ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdecimal() and int(declared) > limit:
        raise Refused(413, f"the upload is {int(declared)} bytes, more than the {limit} allowed")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"the upload is more than the {limit} bytes allowed")
    return bytes(body)


async def _event_stream(path: Path, after: int) -> AsyncIterator[str]:
    """Server-sent events from a job's events.jsonl, each line an event numbered by its place in
    the file, from ``after + 1``; follows the file until an Ended line that nothing follows (a
    resumed job's events go on after its earlier Ended), then an ``end`` event."""
    yield "retry: 2000\n\n"
    offset, index, pending, quiet = 0, 0, b"", 0.0
    while True:
        try:
            with open(path, "rb") as events:
                events.seek(offset)
                data = events.read()
        except FileNotFoundError:  # queued: its worker has not started
            data = b""
        offset += len(data)
        *lines, pending = (pending + data).split(b"\n")
        for number, line in enumerate(lines, start=1):
            if index > after:
                yield f"id: {index}\ndata: {line.decode('utf-8', errors='replace')}\n\n"
            index += 1
            if line.startswith(ENDED_PREFIX.encode()) and number == len(lines) and not pending:
                yield "event: end\ndata: {}\n\n"
                return
        if lines:
            quiet = 0.0
            continue
        quiet += POLL_SECONDS
        if quiet >= KEEP_ALIVE_SECONDS:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(POLL_SECONDS)


def serve(results: str, host: str, port: int, token: str | None, open_browser: bool,
          announce: Callable[[str], None]) -> None:
    """Run the server until Ctrl-C; ``announce`` is given its URL once it listens."""
    settings = make_settings(results, host, port, token)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as bind_error:
        listener.close()
        raise UsageError(f"--host/--port: cannot listen on {host}:{port}: {bind_error.strerror or bind_error}") from None
    listener.listen(128)  # from here on connections wait in the backlog until the app is up
    settings = replace(settings, port=listener.getsockname()[1])
    config = uvicorn.Config(create_app(settings), log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    announce(settings.url())
    if open_browser:
        threading.Timer(1.0, webbrowser.open, [settings.url()]).start()
    server.run(sockets=[listener])
