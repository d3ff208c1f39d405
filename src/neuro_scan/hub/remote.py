"""The only code that talks to the Hugging Face Hub.

Downloads go through ``hf_hub_download`` (so its cache, ``HF_ENDPOINT``, ``HF_TOKEN`` and
``HF_HUB_OFFLINE`` all apply) and uploads through ``HfApi.create_commit``. huggingface_hub's
exceptions become one-line :class:`UsageError` messages that tell apart: the repository is
missing, the Hub cannot be reached, offline mode without a cached copy, the token is refused.
A missing file is not an error here: ``download`` returns None and the caller says what exists.

huggingface_hub retries a Hub it cannot reach five times with back-off (about 23 s per file)
before it falls back to its cache. :func:`unreachable` asks the Hub once first, so an unreachable
Hub costs one quick request: downloads then read the cache only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token, hf_hub_download
from huggingface_hub.errors import (FileMetadataError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                    RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
from huggingface_hub.utils import get_session, validate_repo_id

from neuro_scan.errors import UsageError
from neuro_scan.hub.layout import INDEX_FILE, REPO_ENV, HubIndex

REPO_TYPE = "dataset"


class NotCached(UsageError):
    """HF_HUB_OFFLINE is set and the file is not in the local cache."""


def _first_line(error: BaseException | str) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@functools.cache
def unreachable(endpoint: str) -> str | None:
    """Why the Hub at ``endpoint`` does not answer one request (no retries), or None when it answers
    anything at all. Asked once per process."""
    try:
        get_session().head(endpoint, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except httpx2.TransportError as error:
        return _first_line(error)
    return None


def cannot_reach(endpoint: str, why: str, what: str) -> UsageError:
    """The error for an unreachable Hub when ``what`` (a file, a model) is not cached either."""
    return UsageError(f"cannot reach the Hugging Face Hub at {endpoint} ({why}) and {what} is not in the local cache; "
                      "check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the local cache only")


@dataclass(frozen=True)
class HubRepo:
    """A dataset repository of reports on the Hub that ``HF_ENDPOINT`` points to."""

    repo_id: str

    def __post_init__(self) -> None:
        try:
            validate_repo_id(self.repo_id)
        except HFValidationError as error:
            raise UsageError(f"--repo: '{self.repo_id}' is not a Hub repository id: {_first_line(error)}") from None

    @property
    def endpoint(self) -> str:
        return constants.ENDPOINT

    @property
    def offline(self) -> bool:
        return constants.is_offline_mode()

    def __str__(self) -> str:
        return f"dataset {self.repo_id}"

    def download(self, path: str) -> Path | None:
        """The local (cached) copy of ``path``, or None when the repository has no such file."""
        why = None if self.offline else unreachable(self.endpoint)
        try:
            return Path(hf_hub_download(self.repo_id, path, repo_type=REPO_TYPE, local_files_only=why is not None))
        except RemoteEntryNotFoundError:
            return None
        except LocalEntryNotFoundError as error:
            if why is not None:
                raise cannot_reach(self.endpoint, why, f"{path} of {self}") from None
            raise self._explain(error, f"{path} of {self}") from None
        except (HfHubHTTPError, httpx2.HTTPError) as error:
            raise self._explain(error, f"{path} of {self}") from None

    def index(self) -> HubIndex | None:
        """The repository's index.json, or None when it has none."""
        local = self.download(INDEX_FILE)
        return None if local is None else HubIndex.parse(local.read_bytes(), f"{INDEX_FILE} of {self}")

    def check_writable(self) -> None:
        """Cheap checks before an upload: online, with a token."""
        if self.offline:
            raise UsageError("HF_HUB_OFFLINE is set: publishing needs the network; unset it")
        if get_token() is None:
            raise UsageError(f"publishing needs a Hugging Face token with write access to {self}: "
                             "set HF_TOKEN (or run `hf auth login`)")

    def commit(self, files: dict[str, Path], message: str, description: str, create_pr: bool) -> str:
        """Upload ``files`` (path in the repository -> local file) in one commit; the pull request's
        URL if ``create_pr``, else the commit's."""
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local)) for path, local in files.items()]
        try:
            info = HfApi().create_commit(self.repo_id, operations, commit_message=message,
                                         commit_description=description, repo_type=REPO_TYPE, create_pr=create_pr)
        except (HfHubHTTPError, httpx2.HTTPError) as error:
            raise self._explain(error, f"the upload to {self}") from None
        return info.pr_url if create_pr else info.commit_url

    def _explain(self, error: Exception, what: str) -> UsageError:
        if isinstance(error, RepositoryNotFoundError):  # also private or gated without access
            return UsageError(f"{self} not found on {self.endpoint} (or it is private and HF_TOKEN gives no access "
                              f"to it); name another with --repo or {REPO_ENV}")
        if isinstance(error, RevisionNotFoundError):
            return UsageError(f"{self} on {self.endpoint} has no main branch (is it empty?)")
        if isinstance(error, LocalEntryNotFoundError):
            if self.offline:
                return NotCached(f"HF_HUB_OFFLINE is set and {what} is not in the local cache; "
                                 "unset HF_HUB_OFFLINE to download it")
            cause = error.__cause__
            if isinstance(cause, FileMetadataError):
                return UsageError(f"{self.endpoint} does not answer like a Hugging Face Hub (check HF_ENDPOINT): "
                                  f"{_first_line(cause)}")
            if isinstance(cause, HfHubHTTPError):
                error = cause  # the Hub answered, with an error status: explained below
            else:
                return cannot_reach(self.endpoint, _first_line(cause) if cause is not None else "no answer", what)
        if isinstance(error, HfHubHTTPError) and error.response is not None:
            status = error.response.status_code
            if status == 401:
                return UsageError(f"the Hub at {self.endpoint} rejected the token (HTTP 401); check HF_TOKEN")
            if status == 403:
                return UsageError(f"the Hub refused {what} (HTTP 403): HF_TOKEN has no access to {self.repo_id}")
            return UsageError(f"the Hub at {self.endpoint} answered HTTP {status} for {what}: "
                              f"{_first_line(error.server_message or error)}")
        return UsageError(f"cannot reach the Hugging Face Hub at {self.endpoint} ({_first_line(error)}) "
                          f"during {what}; check the network and HF_ENDPOINT")
