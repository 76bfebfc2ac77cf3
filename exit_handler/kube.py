"""Read and label this run's Argo Workflow object on the Kubernetes API (`--workflow`).

Two requests per run do not justify the `kubernetes` package (tens of MB, a slow import):
this is urllib and ssl, with the credentials found where kubectl and client-go look, the
retries drawing on the run's one deadline, and each failure mapped to its exit status.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import json
import logging
import os
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO, Any, NoReturn

from exit_handler.deadline import Deadline, backoff
from exit_handler.errors import BadInput, Refused, Unavailable

log = logging.getLogger(__name__)

WORKFLOWS = "/apis/argoproj.io/v1alpha1/namespaces/{namespace}/workflows/{name}"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
USER_AGENT = "kfp-exit-handler"
REQUEST_TIMEOUT = 10.0
# A Workflow of thousands of nodes is several MB (etcd stores at most 1.5 MiB by default,
# but a bigger etcd limit or a proxy may send more): far above that is not a Workflow.
MAX_BODY = 64 * 1024 * 1024
_MESSAGE = 300
_NO_CREDENTIALS = (
    "bad input: --workflow: no Kubernetes credentials: not in a pod with a service account "
    "token, and no kubeconfig (--kubeconfig, KUBECONFIG or ~/.kube/config)"
)
# What client-go runs or sends on the user's behalf: nothing here runs plugins or logs in.
_UNSUPPORTED_AUTH = {
    "exec": "an exec credential plugin (exec)",
    "auth-provider": "an auth-provider plugin (auth-provider)",
    "username": "a username and password (basic auth)",
    "password": "a username and password (basic auth)",
}


@dataclass(frozen=True, kw_only=True)
class KubeConfig:
    """Where the API is and how to authenticate to it; secrets stay out of the repr."""

    server: str  # https://host:port
    where: str  # "the service account" or "kubeconfig PATH (context X)", for error lines
    token: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    ca_data: bytes | None = field(default=None, repr=False)  # PEM
    client_cert: str | None = None
    client_cert_data: bytes | None = field(default=None, repr=False)  # PEM
    client_key: str | None = None
    client_key_data: bytes | None = field(default=None, repr=False)  # PEM
    insecure: bool = False  # insecure-skip-tls-verify


def load_config(
    environ: Mapping[str, str],
    kubeconfig: str | None = None,
    service_account: Path = SERVICE_ACCOUNT,
) -> KubeConfig:
    """The credentials to use, first found: `kubeconfig`, `$KUBECONFIG`, the pod's service
    account, `~/.kube/config`.

    Of a `:`-separated KUBECONFIG only the first existing file is read (kubectl merges
    them all; one file is what a pod or a laptop has); one naming no existing file counts
    as unset. The service account comes before ~/.kube/config (client-go's order is the
    reverse) so that a stray file in the image never replaces the pod's own identity.
    """
    if kubeconfig:
        return _from_kubeconfig(Path(kubeconfig), "--kubeconfig")
    for name in filter(None, environ.get("KUBECONFIG", "").split(os.pathsep)):
        if Path(name).is_file():
            return _from_kubeconfig(Path(name), "KUBECONFIG")
    in_cluster = _in_cluster(environ, service_account)
    if in_cluster is not None:
        return in_cluster
    home = environ.get("HOME") or str(Path.home())
    default = Path(home) / ".kube" / "config"
    if default.is_file():
        return _from_kubeconfig(default, "~/.kube/config")
    raise BadInput(_NO_CREDENTIALS)


def _in_cluster(environ: Mapping[str, str], directory: Path) -> KubeConfig | None:
    """The pod's own service account, as client-go's InClusterConfig finds it."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        return None
    try:
        token = (directory / "token").read_text().strip()
    except OSError:
        return None
    if not port.isdigit():
        raise BadInput(f"bad input: KUBERNETES_SERVICE_PORT: {port[:20]!r} is not a port")
    try:
        bracketed = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        bracketed = host
    ca = directory / "ca.crt"
    return KubeConfig(
        server=f"https://{bracketed}:{port}",
        where="the service account",
        token=token or None,
        ca_file=str(ca) if ca.is_file() else None,
    )


def _from_kubeconfig(path: Path, source: str) -> KubeConfig:
    import yaml  # lazily: only a kubeconfig needs it

    try:
        document = yaml.safe_load(path.read_text())
    except OSError as err:
        raise BadInput(f"bad input: {source}: cannot read {path}: {err.strerror or err}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BadInput(f"bad input: kubeconfig {path} is not YAML: {first[:200]}") from None
    return _parse_kubeconfig(document, path)


def _parse_kubeconfig(document: object, path: Path) -> KubeConfig:
    """The current context's cluster and user; relative paths are the kubeconfig's."""
    if not isinstance(document, dict):
        raise BadInput(f"bad input: kubeconfig {path} is not a YAML mapping")
    context_name = document.get("current-context")
    if not context_name or not isinstance(context_name, str):
        raise BadInput(
            f"bad input: kubeconfig {path} has no current-context; "
            "set one with kubectl config use-context"
        )
    where = f"kubeconfig {path} (context {context_name})"
    context = _named(document, "contexts", "context", context_name, path)
    cluster_name = context.get("cluster")
    if not cluster_name or not isinstance(cluster_name, str):
        raise BadInput(f"bad input: {where}: contexts[{context_name}].context.cluster is not set")
    cluster = _Section(
        _named(document, "clusters", "cluster", cluster_name, path),
        f"clusters[{cluster_name}].cluster",
        where,
        path.parent,
    )
    user_name = context.get("user")
    user = _Section(
        _named(document, "users", "user", user_name, path) if user_name else {},
        f"users[{user_name}].user",
        where,
        path.parent,
    )
    server = cluster.text("server")
    if server is None or urllib.parse.urlsplit(server).scheme not in {"https", "http"}:
        raise BadInput(f"bad input: {where}: {cluster.at}.server is not an https:// URL")
    insecure = cluster.values.get("insecure-skip-tls-verify", False)
    if not isinstance(insecure, bool):
        raise BadInput(f"bad input: {where}: {cluster.at}.insecure-skip-tls-verify is not a bool")
    unsupported = sorted(
        {_UNSUPPORTED_AUTH[key] for key in user.values if key in _UNSUPPORTED_AUTH}
    )
    if unsupported:
        raise BadInput(
            f"bad input: {where}: user {user_name!r} authenticates with "
            f"{' and '.join(unsupported)}, which the exit handler does not support; give it "
            "a token (kubectl create token) or a client certificate, or run it in the pod "
            "with its service account"
        )
    config = KubeConfig(
        server=server.rstrip("/"),
        where=where,
        token=user.text("token") or user.token_file(),
        ca_file=cluster.file("certificate-authority"),
        ca_data=cluster.data("certificate-authority-data"),
        client_cert=user.file("client-certificate"),
        client_cert_data=user.data("client-certificate-data"),
        client_key=user.file("client-key"),
        client_key_data=user.data("client-key-data"),
        insecure=insecure,
    )
    has_cert = config.client_cert is not None or config.client_cert_data is not None
    has_key = config.client_key is not None or config.client_key_data is not None
    if has_cert != has_key:
        missing = "client-key(-data)" if has_cert else "client-certificate(-data)"
        raise BadInput(f"bad input: {where}: {user.at} has no {missing} to go with its other half")
    return config


@dataclass(frozen=True)
class _Section:
    """One cluster or user of a kubeconfig, read field by field; errors name the field."""

    values: dict[str, Any]
    at: str  # clusters[NAME].cluster or users[NAME].user
    where: str
    base: Path  # the kubeconfig's directory, which relative paths are relative to

    def text(self, key: str) -> str | None:
        value = self.values.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise BadInput(f"bad input: {self.where}: {self.at}.{key} is not a string")
        return value

    def file(self, key: str) -> str | None:
        value = self.text(key)
        return None if value is None else str(self.base / Path(value).expanduser())

    def data(self, key: str) -> bytes | None:
        value = self.text(key)
        if value is None:
            return None
        try:
            return base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            raise BadInput(f"bad input: {self.where}: {self.at}.{key} is not base64") from None

    def token_file(self) -> str | None:
        """The token in `tokenFile`, read once: one run is shorter than a token's life."""
        path = self.file("tokenFile")
        if path is None:
            return None
        try:
            return Path(path).read_text().strip() or None
        except OSError as err:
            raise BadInput(
                f"bad input: {self.where}: {self.at}.tokenFile: cannot read {path}: "
                f"{err.strerror or err}"
            ) from None


def _named(
    document: dict[str, Any], section: str, key: str, name: object, path: Path
) -> dict[str, Any]:
    """The `key` mapping of the entry called `name` in the list `section`."""
    entries = document.get(section)
    if not isinstance(entries, list):
        raise BadInput(f"bad input: kubeconfig {path}: {section} is not a list")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            found = entry.get(key)
            if found is None:
                return {}
            if not isinstance(found, dict):
                raise BadInput(
                    f"bad input: kubeconfig {path}: {section}[{name}].{key} is not a map"
                )
            return found
    raise BadInput(f"bad input: kubeconfig {path}: no entry named {name!r} in {section}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The API never redirects; following one would send the bearer token elsewhere."""

    def redirect_request(  # noqa: PLR0917  # the signature is urllib's
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


class _Retry(Exception):
    """A transient failure of one attempt: what to say, and the server's Retry-After."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class KubeClient:
    """The two calls the exit handler makes on its own Workflow, retried inside a deadline."""

    def __init__(self, config: KubeConfig) -> None:
        if urllib.parse.urlsplit(config.server).scheme not in {"https", "http"}:
            raise BadInput(
                f"bad input: {config.where}: {config.server[:60]!r} is not an https:// URL"
            )
        self.config = config
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if config.server.startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=_tls_context(config)))
        self._opener = urllib.request.build_opener(*handlers)

    def get_workflow(self, namespace: str, name: str, deadline: Deadline) -> dict[str, Any]:
        """The Workflow object as the API returns it (status.nodes included)."""
        found = self._request("GET", namespace, name, None, deadline)
        if not isinstance(found, dict):
            raise BadInput(
                f"bad input: --workflow: {self.config.server} answered the get of workflow "
                f"{namespace}/{name} with JSON that is not an object"
            )
        return found

    def label_workflow(
        self, namespace: str, name: str, labels: Mapping[str, str], deadline: Deadline
    ) -> None:
        """Set `labels` on the Workflow (a JSON merge patch: other labels stay)."""
        patch = {"metadata": {"labels": dict(labels)}}
        self._request("PATCH", namespace, name, json.dumps(patch).encode(), deadline)

    def _request(
        self, method: str, namespace: str, name: str, body: bytes | None, deadline: Deadline
    ) -> Any:
        """One call, retried on 429, 5xx and transport failures until the deadline."""
        path = WORKFLOWS.format(
            namespace=urllib.parse.quote(namespace, safe=""),
            name=urllib.parse.quote(name, safe=""),
        )
        verb = "get" if method == "GET" else "patch"
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json"
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        what = f"{verb} workflow {namespace}/{name}"
        last = "no attempt made"
        delays = backoff(deadline, first=0.2, ceiling=5.0)
        while True:
            request = urllib.request.Request(  # noqa: S310  # __init__ checked the scheme
                self.config.server + path, data=body, headers=headers, method=method
            )
            try:
                return self._attempt(request, what, namespace, name, deadline)
            except _Retry as retry:
                last = retry.reason
                wait = retry.retry_after
            if wait is not None and wait >= deadline.remaining():
                raise Unavailable(
                    f"the Kubernetes API {self.config.server} asked to retry {what} in "
                    f"{wait:g} s, after the deadline ({deadline.seconds:g} s; {last})"
                )
            delay = next(delays, None)
            if delay is None:
                raise Unavailable(
                    f"the Kubernetes API {self.config.server} did not answer {what} before "
                    f"the deadline ({deadline.seconds:g} s; last error: {last})"
                )
            log.info("%s on %s failed (%s); retrying", what, self.config.server, last)
            time.sleep(min(max(delay, wait or 0.0), deadline.remaining()))

    def _attempt(
        self,
        request: urllib.request.Request,
        what: str,
        namespace: str,
        name: str,
        deadline: Deadline,
    ) -> Any:
        server = self.config.server
        try:
            with self._opener.open(request, timeout=deadline.cap(REQUEST_TIMEOUT)) as response:
                content = _read_bounded(response, f"workflow {namespace}/{name} from {server}")
        except urllib.error.HTTPError as err:
            try:
                self._refuse(err, what, namespace, name)
            finally:
                err.close()
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise self._unverified(reason) from err
            raise _Retry(_reason(reason if isinstance(reason, BaseException) else err)) from err
        except ssl.SSLCertVerificationError as err:
            raise self._unverified(err) from err
        except (OSError, http.client.HTTPException) as err:  # timeouts, resets, cut bodies
            raise _Retry(_reason(err)) from err
        try:
            return json.loads(content)
        except ValueError:
            raise BadInput(
                f"bad input: --workflow: {server} answered {what} with a body that is not "
                "JSON: is it the Kubernetes API?"
            ) from None

    def _unverified(self, err: ssl.SSLCertVerificationError) -> Refused:
        """Not retried: no attempt makes an untrusted certificate trusted."""
        return Refused(
            f"the Kubernetes API {self.config.server} failed TLS verification "
            f"({err.verify_message}); check the CA of {self.config.where}"
        )

    def _refuse(
        self, err: urllib.error.HTTPError, what: str, namespace: str, name: str
    ) -> NoReturn:
        """Raise what an HTTP error status means: retry, refused, not found or bad input."""
        server, code = self.config.server, err.code
        try:
            message = _status_message(err.read(64 * 1024), err.reason)
        except (OSError, http.client.HTTPException):
            message = str(err.reason)
        if code == 429 or code >= 500:
            raise _Retry(f"{code} {message}", _retry_after(err.headers))
        if code in {401, 403}:
            hint = (
                f"the credentials of {self.config.where} are not accepted (expired token?)"
                if code == 401
                else f"give the identity of {self.config.where} get and patch on "
                f"workflows.argoproj.io in namespace {namespace} (a Role and RoleBinding)"
            )
            raise Refused(f"the Kubernetes API {server} refused {what} ({code}): {message}; {hint}")
        if code == 404:
            raise BadInput(
                f"bad input: --workflow: workflow {namespace}/{name} not found on {server} "
                f"({message})"
            )
        raise BadInput(
            f"bad input: --workflow: the Kubernetes API {server} answered {what} "
            f"with {code}: {message}"
        )


def _tls_context(config: KubeConfig) -> ssl.SSLContext:
    """Verify against the kubeconfig's CA (only it, as client-go does) or the system's."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if config.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif config.ca_file or config.ca_data:
        try:
            if config.ca_file:
                context.load_verify_locations(cafile=config.ca_file)
            if config.ca_data:
                context.load_verify_locations(cadata=config.ca_data.decode("ascii"))
        except (OSError, ssl.SSLError, UnicodeDecodeError) as err:
            raise BadInput(
                f"bad input: {config.where}: its certificate authority cannot be loaded: "
                f"{_reason(err)}"
            ) from None
    else:
        context.load_default_certs()
    if config.client_cert or config.client_cert_data:
        try:
            with _pem_files(config) as (cert, key):
                context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as err:
            raise BadInput(
                f"bad input: {config.where}: its client certificate and key cannot be loaded: "
                f"{_reason(err)}"
            ) from None
    return context


@contextmanager
def _pem_files(config: KubeConfig) -> Iterator[tuple[str, str | None]]:
    """Paths of the client certificate and key: ssl loads only files, so -data forms are
    written to a private directory for the moment of loading, then removed."""
    if config.client_cert_data is None and config.client_key_data is None:
        assert config.client_cert is not None
        yield config.client_cert, config.client_key
        return
    with tempfile.TemporaryDirectory(prefix="kfp-exit-handler-") as private:  # mode 0700

        def write(name: str, content: bytes) -> str:
            path = os.path.join(private, name)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                out.write(content)
            return path

        cert = write("cert.pem", config.client_cert_data) if config.client_cert_data else None
        key = write("key.pem", config.client_key_data) if config.client_key_data else None
        yield cert or str(config.client_cert), key or config.client_key


def _read_bounded(response: Any, what: str) -> bytes:
    """The body, refused above MAX_BODY before reading it all where the length is known."""
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise BadInput(f"bad input: --workflow: {what} is {int(length)} bytes, over {MAX_BODY}")
    content: bytes = response.read(MAX_BODY + 1)
    if len(content) > MAX_BODY:
        raise BadInput(f"bad input: --workflow: {what} is over {MAX_BODY} bytes")
    return content


def _status_message(content: bytes, fallback: object) -> str:
    """The `message` of a Kubernetes Status body, else the body's first line, trimmed."""
    try:
        status = json.loads(content)
    except ValueError:
        status = None
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        message: str = status["message"]
    else:
        lines = content.decode("utf-8", "replace").strip().splitlines()
        message = lines[0] if lines else str(fallback)
    return message.strip()[:_MESSAGE].rstrip() or str(fallback)


def _retry_after(headers: Message) -> float | None:
    """Retry-After in seconds; the API sends whole seconds, never a date."""
    value = (headers.get("Retry-After") or "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < 86400 else None


def _reason(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]
