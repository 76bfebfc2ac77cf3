"""Find this run's executions of a component output under the pipeline root (README).

TFX writes `{root}/{component}/{output}/{execution_id}/`, and the root is shared by every
run of the pipeline. Listing costs one request per 1,000 execution prefixes plus one per
execution looked into, newest first, stopping at the first execution older than the run:
the cost follows this run's pushes, not the pipeline's history.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from exit_handler.deadline import Deadline, backoff
from exit_handler.errors import BadInput, Refused, Unavailable

if TYPE_CHECKING:
    from google.cloud.storage import Client

log = logging.getLogger(__name__)

_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# A component or output name becomes one path segment: no slash, no traversal.
SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
REQUEST_TIMEOUT = 10.0
# GCS's own default and maximum, asked for explicitly: an emulator that would not page
# otherwise pages as GCS does.
PAGE_SIZE = 1000
T = TypeVar("T")


def check_segment(value: str) -> str:
    """Return `value` if it can name a component or output directory, else raise ValueError."""
    if not SEGMENT.fullmatch(value) or value in {".", ".."}:
        raise ValueError(f"{value[:60]!r} is not a component or output name ([A-Za-z0-9_.-])")
    return value


@dataclass(frozen=True)
class PipelineRoot:
    """`gs://bucket/path`, the folder under which TFX writes every component's outputs."""

    bucket: str
    path: str

    @classmethod
    def parse(cls, text: str) -> PipelineRoot:
        if "{{" in text:
            raise ValueError(f"{text[:60]!r} is an unresolved Argo variable")
        if not text.startswith("gs://"):
            raise ValueError(f"{text[:60]!r} is not a gs://bucket/path URI")
        bucket, _, path = text[len("gs://") :].partition("/")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise ValueError(f"{bucket[:63]!r} is not a valid GCS bucket name")
        segments = path.strip("/").split("/") if path.strip("/") else []
        if any(segment in {"", ".", ".."} or not segment.isprintable() for segment in segments):
            raise ValueError(f"{text[:60]!r} has an empty, '.', '..' or unprintable path segment")
        return cls(bucket, "/".join(segments))

    def output_prefix(self, component: str, output: str) -> str:
        """The object-name prefix under which each execution is one 'directory'."""
        return "/".join([*filter(None, [self.path]), component, output, ""])

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.path}" if self.path else f"gs://{self.bucket}"


class StoredObject(NamedTuple):
    """The fields of one GCS object that discovery reads."""

    name: str
    size: int
    created: datetime
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class Execution:
    """One execution directory of a component output that this run wrote."""

    component: str
    output: str
    version: str
    uri: str
    pushed: bool
    created: datetime
    metadata: Mapping[str, str] = field(default_factory=dict)


def version_order(version: str) -> tuple[int, int, str]:
    """Execution ids only grow: numeric order first, other names after, lexicographically."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


class _Page(NamedTuple):
    """One page of a GCS listing: its objects, its 'directories' and the next page's token."""

    blobs: list[Any]
    prefixes: set[str]
    next_token: str | None


class Window(NamedTuple):
    """When a component's node ran (from the Workflow object), skew included."""

    start: datetime
    end: datetime
    attempts: int  # the node's pods: each writes at most one execution


@dataclass
class RootLister:
    """Lists one pipeline root for one run; each component output is listed at most once.

    Executions count when created inside the run's window, or inside the component's own
    `Window` where the Workflow object told when its node ran: then two overlapping runs of
    one pipeline each find their own executions. More executions inside a component's window
    than its pods could write means another run's node ran in the same seconds: the
    component is named in `overlapping`, for the event to say so instead of guessing.
    """

    root: PipelineRoot
    window_start: datetime
    window_end: datetime
    deadline: Deadline
    component_windows: Mapping[str, Window] = field(default_factory=dict)
    overlapping: set[str] = field(default_factory=set)
    requests: int = 0
    _client: Client | None = None
    _cache: dict[tuple[str, str], list[Execution]] = field(default_factory=dict)

    def executions(self, component: str, output: str) -> list[Execution]:
        """This run's executions of `component/output`, oldest first."""
        key = (component, output)
        window = self.component_windows.get(component)
        if window is not None and window.attempts == 0:
            return []  # its node ran no pod in this run: nothing to list
        if key not in self._cache:
            self._cache[key] = self._list(component, output)
        return self._cache[key]

    def _list(self, component: str, output: str) -> list[Execution]:
        prefix = self.root.output_prefix(component, output)
        versions = sorted(self._call(partial(self._prefixes, prefix)), key=version_order)
        window = self.component_windows.get(component)
        start, end = (window.start, window.end) if window else (self.window_start, self.window_end)
        found: list[Execution] = []
        for version in reversed(versions):
            objects = self._call(partial(self._objects, f"{prefix}{version}/"))
            if not objects:
                continue
            created = min(blob.created for blob in objects)
            if created < start:
                break
            if created > end:
                continue
            found.append(self._execution(component, output, version, created, objects))
        found.reverse()
        log.info(
            "%s/%s: %d of %d executions are this run's (%s); %d GCS requests so far",
            component,
            output,
            len(found),
            len(versions),
            ", ".join(execution.version for execution in found) or "none",
            self.requests,
        )
        if window is not None and len(found) > window.attempts:
            self.overlapping.add(component)
            log.warning(
                "%s/%s has %d executions inside the %d s in which its node ran (%s), more than "
                "its %d pods wrote: another run of the pipeline ran %s in the same seconds; "
                "the event names %s in overlappingComponents",
                component,
                output,
                len(found),
                round((end - start).total_seconds()),
                ", ".join(execution.version for execution in found),
                window.attempts,
                component,
                component,
            )
        elif window is None and len(found) > 1:
            log.warning(
                "%s/%s has %d executions inside this run's window (%s): overlapping runs "
                "of the same pipeline? keeping them all",
                component,
                output,
                len(found),
                ", ".join(execution.version for execution in found),
            )
        return found

    def _execution(
        self,
        component: str,
        output: str,
        version: str,
        created: datetime,
        objects: list[StoredObject],
    ) -> Execution:
        metadata: dict[str, str] = {}
        for blob in objects:
            for key, value in blob.metadata.items():
                metadata.setdefault(key, value)
        pushed = any(not _is_marker(blob) for blob in objects)
        uri = f"gs://{self.root.bucket}/{self.root.output_prefix(component, output)}{version}"
        return Execution(component, output, version, uri, pushed, created, metadata)

    def _storage(self) -> Client:
        if self._client is None:
            # Imported here: ~0.35 s that a run without a pipeline root must not pay.
            from google.cloud import storage

            # google-cloud-storage 3.x fetches each bucket's metadata in a background thread
            # to label trace spans: a request (and storage.buckets.get) the answer never needs.
            os.environ.setdefault("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
            self._client = storage.Client(project="<none>")
        return self._client

    def _prefixes(self, prefix: str) -> list[str]:
        names: set[str] = set()  # a prefix may come back on more than one page
        for page in self._pages(prefix=prefix, delimiter="/", fields="prefixes,nextPageToken"):
            names.update(name[len(prefix) :].rstrip("/") for name in page.prefixes)
        return list(names)

    def _objects(self, prefix: str) -> list[StoredObject]:
        fields = "items(name,size,timeCreated,metadata),nextPageToken"
        return [
            StoredObject(blob.name, blob.size or 0, blob.time_created, blob.metadata or {})
            for page in self._pages(prefix=prefix, fields=fields)
            for blob in page.blobs
        ]

    def _pages(self, **query: str) -> Iterator[_Page]:
        """Each page of a listing as its own request, retried on its own, with a timeout cut
        to what is left of the deadline: a listing of many pages ends at `--timeout`."""
        token: str | None = None
        while True:
            page = self._call(partial(self._page, token, query))
            yield page
            token = page.next_token
            if not token:
                return

    def _page(self, token: str | None, query: dict[str, str]) -> _Page:
        if self.deadline.expired():
            raise TimeoutError("the deadline passed between two pages")
        listing = self._storage().list_blobs(
            self.root.bucket,
            page_token=token,
            page_size=PAGE_SIZE,
            retry=None,
            timeout=self.deadline.cap(REQUEST_TIMEOUT),
            **query,
        )
        page = next(listing.pages)
        self.requests += 1
        return _Page(list(page), set(page.prefixes), listing.next_page_token)

    def _call(self, request: Callable[[], T]) -> T:
        """Run one listing, retrying transient GCS errors with backoff inside the deadline.

        Every failure of the transport is transient, a response cut mid-body included:
        exit 1 would not be retried by Argo and the event would be lost. Only a failed TLS
        verification is not: retrying cannot make an untrusted certificate trusted.
        """
        import http.client

        from google.api_core import exceptions as api
        from google.auth import exceptions as auth
        from requests import exceptions as web
        from urllib3 import exceptions as pool

        def refused(err: BaseException) -> Refused:
            return Refused(
                f"GCS refused to list {self.root}: {_reason(err)}; give the workflow's "
                "service account storage.objects.list on the bucket (on GKE: check its "
                "Workload Identity binding)"
            )

        transient: tuple[type[BaseException], ...] = (
            api.TooManyRequests,
            api.ServerError,
            auth.TransportError,  # fetching the token: the same failures, wrapped
            web.ConnectionError,  # resets, refused connections, proxies, TLS
            web.Timeout,
            web.ChunkedEncodingError,  # a body cut short of its Content-Length or last chunk
            web.ContentDecodingError,  # a compressed body cut or garbled
            web.JSONDecodeError,  # a body cut where only the connection's close ends it
            # What requests wraps as the above, but some versions let through (psf/requests#2673).
            pool.ProtocolError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
        )
        last: BaseException | None = None
        delays = backoff(self.deadline, first=0.2, ceiling=5.0)
        while True:
            try:
                return request()
            except (api.Forbidden, api.Unauthorized, auth.DefaultCredentialsError) as err:
                raise refused(err) from err
            except auth.RefreshError as err:  # the token: metadata server or Workload Identity
                if not getattr(err, "retryable", False):
                    raise refused(err) from err
                last = err
                log.info("GCS credentials could not be refreshed (%s); retrying", _reason(err))
            except api.NotFound as err:
                raise BadInput(
                    f"bad input: --pipeline-root: bucket {self.root.bucket!r} does not exist "
                    f"({_reason(err)}); check the pipeline root"
                ) from err
            except api.BadRequest as err:
                raise BadInput(
                    f"bad input: --pipeline-root: GCS rejected {self.root}: {_reason(err)}"
                ) from err
            except transient as err:
                unverified = _unverified_tls(err)
                if unverified is not None:
                    raise Refused(
                        f"GCS {self.root}: TLS verification failed ({unverified.verify_message}); "
                        "a proxy that intercepts TLS needs its CA in REQUESTS_CA_BUNDLE"
                    ) from err
                last = err
                log.info("GCS listing of %s failed (%s); retrying", self.root, _reason(err))
            delay = next(delays, None)
            if delay is None:
                raise Unavailable(
                    f"GCS did not answer the listing of {self.root} before the deadline "
                    f"({self.deadline.seconds:g} s; last error: {_reason(last)})"
                )
            time.sleep(delay)


def _is_marker(blob: StoredObject) -> bool:
    """A zero-byte 'directory' object: what a Pusher that pushed nothing may leave."""
    return blob.size == 0 and blob.name.endswith("/")


def _unverified_tls(err: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure under `err`, if that is what it is (requests
    wraps urllib3, which wraps the ssl error)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _reason(err: BaseException | None) -> str:
    text = str(err).splitlines()[0] if err is not None and str(err) else type(err).__name__
    return text[:200]


def pushed_versions(executions: Iterable[Execution]) -> list[Execution]:
    """The executions that hold a pushed model (not only a directory marker)."""
    return [execution for execution in executions if execution.pushed]
