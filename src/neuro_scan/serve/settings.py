"""Where the server listens, who may use it, and which files it may serve.

The server runs models and reads files, so:

- it binds 127.0.0.1 unless told otherwise, and a loopback server answers only requests whose
  ``Host`` names the loopback address (a web page that rebinds its own DNS name to 127.0.0.1
  reaches nothing);
- it has a token (given with ``--token``, or generated). Requests that change something (start,
  cancel, upload) need it in the ``X-Neuro-Scan-Token`` header, whatever the address: another
  site open in the same browser can send requests but cannot read our page to learn the token.
  When the token is required (any address but loopback, or a ``--token`` given), every other
  request needs it too: in that header, as ``?token=`` (the printed URL; the page then keeps it
  in a same-site cookie) or in that cookie;
- files are served from the results folder only (:func:`confine`).
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from neuro_scan.errors import UsageError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_HEADER = "x-neuro-scan-token"
TOKEN_COOKIE = "neuro_scan_token"
TOKEN_QUERY = "token"


class Refused(Exception):
    """A request the server does not serve: ``status`` and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Settings:
    results: Path
    host: str
    port: int
    token: str
    token_required: bool  # for every request, not only the ones that change something

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?{TOKEN_QUERY}={self.token}" if self.token_required else "")


def make_settings(results: str | Path, host: str, port: int, token: str | None) -> Settings:
    """The server's settings; the results folder is created if needed. A non-loopback ``host``
    always requires a token: the given one or a generated one."""
    if port < 0 or port > 65535:
        raise UsageError(f"--port: must be a port number 0..65535 (0: a free one), got {port}")
    if token is not None and len(token) < 8:
        raise UsageError("--token: must be at least 8 characters")
    folder = Path(results).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--results: {folder} is a file; give the folder that holds (or will hold) the results")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--results: cannot create {folder}: {error.strerror or error}") from None
    return Settings(folder.resolve(), host, port, token or secrets.token_urlsafe(24),
                    token_required=token is not None or host not in LOOPBACK)


def check_host(settings: Settings, host_header: str | None) -> None:
    """A loopback server answers only requests addressed to the loopback address (DNS rebinding)."""
    if not settings.loopback:
        return
    allowed = {f"{name}:{settings.port}" for name in ("127.0.0.1", "localhost", "[::1]")}
    if (host_header or "").lower() not in allowed:
        raise Refused(403, f"this server answers requests to 127.0.0.1:{settings.port} only, not to "
                           f"'{host_header or ''}'")


def check_token(settings: Settings, method: str, header: str | None, query: str | None, cookie: str | None) -> None:
    """Refused unless the request carries the token where it must (module docstring)."""
    changes = method not in ("GET", "HEAD")
    if changes:
        if not _same(header, settings.token):
            raise Refused(403, f"this request changes something: it needs the server's token in the "
                               f"{TOKEN_HEADER} header (the page sends it)")
    elif settings.token_required and not any(_same(given, settings.token) for given in (header, query, cookie)):
        raise Refused(403, "this server needs its token: open the URL it printed (it ends in ?token=...)")


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def confine(root: Path, relative: str) -> Path:
    """``relative`` (a path from a URL or a form) as a path inside the results folder ``root``.

    Refused: absolute paths, ``..``, backslashes, NUL, hidden names (the folders' locks and
    records), and symbolic links that lead out of the folder."""
    parts = relative.split("/")
    if (not relative or relative.startswith("/") or "\\" in relative or "\0" in relative
            or any(part in ("", ".", "..") or part.startswith(".") for part in parts)):
        raise Refused(400, f"'{relative}' is not a path inside the results folder")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, real]) != real_root:
        raise Refused(403, f"'{relative}' leads out of the results folder")
    return Path(real)


def relative_to_results(root: Path, path: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()
