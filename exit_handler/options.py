"""Turn the command line and the environment into validated, typed options (see --help).

Every option may come from `EXIT_HANDLER_<OPTION>`; the command line wins, an empty value
counts as not given. All bad fields are gathered into one error line. Secrets are read
here from files or the environment and never echoed.
"""

from __future__ import annotations

import argparse
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from exit_handler.delivery import DELIVERIES, NatsAuth, NatsSettings
from exit_handler.errors import BadInput, InvalidFields
from exit_handler.pipeline_root import PipelineRoot, check_segment
from exit_handler.run import OWN_NODES, Run, RunText, read_run
from exit_handler.wire import CONTENT_MODES

if TYPE_CHECKING:
    from exit_handler.artifact_definitions import ArtifactDefinition
    from exit_handler.kube import KubeClient
    from exit_handler.workflow import WorkflowRun

ENV_PREFIX = "EXIT_HANDLER_"
DEFAULT_NATS_URL = "nats://eventbus-kfp-operator-events-stan-svc.kfp-operator.svc:4222"
MAX_FILE = 8 * 1024 * 1024
MAX_SECRET = 64 * 1024
_NEXT_ITEM = re.compile(r",(?=[A-Za-z0-9_][A-Za-z0-9_.-]*=)")
_SUBJECT = re.compile(r"[^\s.*>]+(\.[^\s.*>]+)*")
_TOKEN = re.compile(r"[^\s.*>]+")
T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are our one-line BadInput, never echoing values."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            # The values may be secrets someone put on the command line by mistake.
            names = [w.split("=", 1)[0] for w in message.split()[2:] if w.startswith("-")]
            message = "unrecognized options: " + (" ".join(names) or "(values without options)")
        raise BadInput(f"bad input: {message} (see {self.prog} --help)")


def add_publish_options(parser: argparse.ArgumentParser) -> None:
    """The options of `exit-handler publish`; every default lives in `read_options`."""
    # Not mutated: help text is wording, and every CLI test parses these declarations.
    # pragma: no mutate block
    source = parser.add_argument_group(
        "the run from its Workflow object (the variables below stand in if the API refuses)"
    )
    source.add_argument("--workflow", help="read the Workflow NAME in --namespace from the API")
    source.add_argument(
        "--kubeconfig", help="default: the pod's service account, else KUBECONFIG, ~/.kube/config"
    )
    run = parser.add_argument_group("the run (Argo template variables)")
    run.add_argument("--status", help="{{workflow.status}}: Succeeded, Failed or Error")
    run.add_argument("--workflow-name", help="{{workflow.name}}")
    run.add_argument("--workflow-uid", help="{{workflow.uid}}")
    run.add_argument("--namespace", help="{{workflow.namespace}}")
    run.add_argument("--created-at", help="{{workflow.creationTimestamp}} (RFC 3339)")
    run.add_argument("--pipeline-name", help="the pipeline's name (set by inject)")
    run.add_argument("--pipeline-root", help="gs://bucket/path; none: empty artifact lists")
    run.add_argument("--failures", help="{{workflow.failures}} (JSON quoted twice, or null)")
    run.add_argument("--failures-file", help="a file holding {{workflow.failures}}")
    run.add_argument(
        "--exit-templates",
        help="template or step names of the exit handler's own nodes, ignored among the failures; "
        f"default {','.join(OWN_NODES)} (what inject names them)",
    )
    run.add_argument(
        "--output-parameter",
        action="append",
        metavar="NAME=VALUE",
        help="a workflow output parameter to copy into the event (repeatable)",
    )
    run.add_argument("--run-id", help="the KFP run id ({{workflow.uid}} rewritten by KFP)")
    run.add_argument("--run-name")
    run.add_argument("--run-configuration-name")
    found = parser.add_argument_group("artifacts")
    found.add_argument("--artifacts", help="Run Artifact Definitions, JSON or YAML list")
    found.add_argument("--artifacts-file", help="a file of Run Artifact Definitions")
    found.add_argument("--pusher-components", help="comma-separated, default Pusher")
    found.add_argument("--clock-skew", help="seconds of tolerance around the run, default 5")
    event = parser.add_argument_group("the event and its delivery")
    event.add_argument("--provider", help="data.provider and the CloudEvent source, default kfp")
    event.add_argument("--subject", help="default events")
    event.add_argument("--content-mode", help="binary (default) or structured")
    event.add_argument("--dry-run", action="store_true", default=None, help="print, do not publish")
    add_delivery_options(parser, event)


def add_delivery_options(
    parser: argparse.ArgumentParser, group: argparse._ArgumentGroup | None = None
) -> None:
    """Where and how to deliver, with secrets and logging: shared by publish and replay."""
    # Not mutated: help text is wording, and every CLI test parses these declarations.
    # pragma: no mutate block
    add = parser.add_argument
    event = group or parser.add_argument_group("delivery")
    event.add_argument("--nats-url", help="comma-separated nats:// or tls:// servers")
    event.add_argument("--delivery", help="auto (default), core or jetstream")
    event.add_argument("--jetstream-domain", help="the JetStream domain of the stream (leafnodes)")
    event.add_argument("--timeout", help="overall deadline in seconds, default 60")
    secrets = parser.add_argument_group("NATS authentication and TLS (secrets from files or env)")
    secrets.add_argument("--nats-token-file", help="or EXIT_HANDLER_NATS_TOKEN")
    secrets.add_argument("--nats-user")
    secrets.add_argument("--nats-password-file", help="or EXIT_HANDLER_NATS_PASSWORD")
    secrets.add_argument("--nats-creds-file", help="a JWT .creds file")
    secrets.add_argument("--nats-nkey-seed-file")
    secrets.add_argument("--nats-auth-secret-file", help="an Argo Events eventbus auth secret")
    secrets.add_argument("--nats-tls-ca")
    secrets.add_argument("--nats-tls-cert")
    secrets.add_argument("--nats-tls-key")
    add("--log-format", help="text (default) or json, on stderr")
    add("--debug", action="store_true", default=None, help="tracebacks on errors")


def with_environment(
    parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Fill each option not given on the command line from `EXIT_HANDLER_<OPTION>`."""
    values: dict[str, Any] = {}
    for action in parser._actions:  # argparse has no public list of an parser's options
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest)
        if value in (None, "", []):
            text = environ.get(ENV_PREFIX + action.dest.upper(), "")
            value = _from_environment(action, text) if text else None
        values[action.dest] = value
    return values


def _from_environment(action: argparse.Action, text: str) -> object:
    variable = ENV_PREFIX + action.dest.upper()
    if isinstance(action, argparse._StoreTrueAction):
        if text.lower() in {"1", "true", "yes"}:
            return True
        if text.lower() in {"0", "false", "no"}:
            return False
        raise BadInput(f"bad input: {variable}: expected true or false")
    if isinstance(action, argparse._AppendAction):
        # NAME=VALUE items: a comma splits only before the next NAME=, so values such as
        # {"a":1,"b":2} survive.
        return [item for item in _NEXT_ITEM.split(text) if item]
    return text


@dataclass(frozen=True)
class Options:
    """Everything `publish` needs, validated."""

    run: Run
    root: PipelineRoot | None
    pusher_components: tuple[str, ...]
    clock_skew: float
    artifacts: tuple[ArtifactDefinition, ...]
    provider: str
    nats: NatsSettings
    content_mode: str
    timeout: float
    dry_run: bool
    # The Workflow object read (`--workflow`) and the client that marks it published.
    workflow: WorkflowRun | None = None
    kube: KubeClient | None = None


def read_options(values: Mapping[str, Any], environ: Mapping[str, str]) -> Options:
    """Validate every option; raise one `InvalidFields` that names each bad one."""
    problems: list[str] = []

    def check(option: str, convert: Callable[[], T], fallback: T) -> T:
        try:
            return convert()
        except (ValueError, OSError) as err:
            problems.append(f"{option}: {err}")
            return fallback

    get = values.get

    def text_of(key: str) -> tuple[str, str] | None:
        """(where it came from, the text) of `--KEY` or `--KEY-file`, whichever was given."""
        given = check(f"--{key}", lambda: _one_of(get, key, f"{key}_file"), None)
        if given is None:
            return None
        option, value = given
        if option.endswith("-file"):
            return f"{option} {value}", check(option, lambda: _text(value), "")
        return given

    failures = text_of("failures")
    root = check("--pipeline-root", lambda: _root(get("pipeline_root")), None)
    if root is not None and not get("created_at"):
        problems.append("--created-at: required when --pipeline-root is listed")
    run: Run | None = None
    try:
        run = read_run(
            RunText(
                status=get("status"),
                pipeline_name=get("pipeline_name"),
                workflow_name=get("workflow_name"),
                workflow_uid=get("workflow_uid"),
                namespace=get("namespace"),
                created_at=get("created_at"),
                finished_at=get("finished_at"),
                run_id=get("run_id"),
                run_name=get("run_name"),
                run_configuration_name=get("run_configuration_name"),
                failures=failures[1] if failures else None,
                exit_templates=_list(get("exit_templates")) or OWN_NODES,
                output_parameters=tuple(get("output_parameter") or ()),
                outputs_resolved=bool(get("outputs_resolved")),
            )
        )
    except InvalidFields as err:
        problems.extend(err.problems)
    definitions: list[ArtifactDefinition] = []
    artifacts = text_of("artifacts")
    if artifacts is not None:
        # Imported here: the filter language is only needed when definitions are given.
        from exit_handler.artifact_definitions import DefinitionError, load_definitions

        try:
            definitions = load_definitions(artifacts[1], source=artifacts[0])
        except DefinitionError as err:
            problems.append(str(err))
    options = Options(
        run=run,  # type: ignore[arg-type]  # None only when problems were found; see below
        root=root,
        pusher_components=check(
            "--pusher-components",
            lambda: tuple(check_segment(c) for c in _list(get("pusher_components"))),
            (),
        )
        or ("Pusher",),
        clock_skew=check("--clock-skew", lambda: _seconds(get("clock_skew"), 5, 0), 5.0),
        artifacts=tuple(definitions),
        provider=check("--provider", lambda: _word(get("provider") or "kfp"), "kfp"),
        nats=_nats(values, environ, check, problems),
        content_mode=check(
            "--content-mode", lambda: _choice(get("content_mode"), CONTENT_MODES), "binary"
        ),
        timeout=check("--timeout", lambda: _seconds(get("timeout"), 60, 0.001), 60.0),
        dry_run=bool(get("dry_run")),
    )
    if problems:
        raise InvalidFields(problems)
    return options


def read_timeout(values: Mapping[str, Any]) -> float:
    """`--timeout` alone: the deadline starts before the Workflow object is read.

    A bad value counts as the default here; `read_options` names it with every other.
    """
    try:
        return _seconds(values.get("timeout"), 60, 0.001)
    except ValueError:
        return 60.0


def read_delivery(
    values: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[NatsSettings, float]:
    """The NATS settings and the deadline of `add_delivery_options`, validated together."""
    problems: list[str] = []

    def check(option: str, convert: Callable[[], T], fallback: T) -> T:
        try:
            return convert()
        except (ValueError, OSError) as err:
            problems.append(f"{option}: {err}")
            return fallback

    nats = _nats(values, environ, check, problems)
    timeout = check("--timeout", lambda: _seconds(values.get("timeout"), 60, 0.001), 60.0)
    if problems:
        raise InvalidFields(problems)
    return nats, timeout


def _nats(
    values: Mapping[str, Any],
    environ: Mapping[str, str],
    check: Callable[[str, Callable[[], Any], Any], Any],
    problems: list[str],
) -> NatsSettings:
    get = values.get
    nats = NatsSettings(
        servers=check("--nats-url", lambda: _servers(get("nats_url") or DEFAULT_NATS_URL), ()),
        subject=check("--subject", lambda: _subject(get("subject") or "events"), "events"),
        delivery=check("--delivery", lambda: _choice(get("delivery"), DELIVERIES), "auto"),
        jetstream_domain=check(
            "--jetstream-domain", lambda: _domain(get("jetstream_domain")), None
        ),
        auth=check("NATS authentication", lambda: _auth(values, environ), NatsAuth()),
        tls_ca=check("--nats-tls-ca", lambda: _file(get("nats_tls_ca")), None),
        tls_cert=check("--nats-tls-cert", lambda: _file(get("nats_tls_cert")), None),
        tls_key=check("--nats-tls-key", lambda: _file(get("nats_tls_key")), None),
    )
    if bool(nats.tls_cert) != bool(nats.tls_key):
        problems.append("--nats-tls-cert and --nats-tls-key: give both or neither")
    elif not problems:  # a CA, certificate or key that does not load is bad input, not an outage
        check("--nats-tls-ca/--nats-tls-cert/--nats-tls-key", nats.tls_context, None)
    return nats


def _one_of(get: Callable[[str], Any], text: str, file: str) -> tuple[str, str] | None:
    """(option, value) of whichever of `--X` and `--X-file` was given; both is an error."""
    given = [(f"--{key.replace('_', '-')}", get(key)) for key in (text, file) if get(key)]
    if len(given) > 1:
        raise ValueError(f"give --{text.replace('_', '-')} or {given[1][0]}, not both")
    return given[0] if given else None


def _text(path: str, limit: int = MAX_FILE) -> str:
    """A bounded UTF-8 file: never more than `limit` bytes are read (think /dev/zero)."""
    with open(path, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None


def _root(text: str | None) -> PipelineRoot | None:
    return PipelineRoot.parse(text) if text else None


def _list(text: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (text or "").split(",") if item.strip())


def _seconds(text: str | None, default: float, minimum: float) -> float:
    if not text:
        return float(default)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a number of seconds") from None
    if not minimum <= value <= 3600:
        raise ValueError(f"{text[:40]!r} is outside {minimum:g}..3600 seconds")
    return value


def _choice(text: str | None, choices: tuple[str, ...]) -> str:
    if not text:
        return choices[0]
    if text not in choices:
        raise ValueError(f"{text[:40]!r} is not one of {', '.join(choices)}")
    return text


def _word(text: str) -> str:
    if len(text) > 253 or not text.isprintable() or " " in text:
        raise ValueError(f"{text[:40]!r} must be printable, without spaces, at most 253 characters")
    return text


def _subject(text: str) -> str:
    if len(text) > 255 or not _SUBJECT.fullmatch(text) or not text.isprintable():
        raise ValueError(f"{text[:40]!r} is not a NATS subject to publish to (no wildcards)")
    return text


def _domain(text: str | None) -> str | None:
    """A JetStream domain is one subject token: it becomes `$JS.<domain>.API`."""
    if not text:
        return None
    if len(text) > 255 or not _TOKEN.fullmatch(text) or not text.isprintable():
        raise ValueError(f"{text[:40]!r} is not a JetStream domain (no spaces, dots or wildcards)")
    return text


def _servers(text: str) -> tuple[str, ...]:
    if not text.isprintable():
        raise ValueError("contains control characters or invalid UTF-8")
    servers = _list(text)
    for server in servers:
        scheme, sep, rest = server.partition("://")
        if "@" in rest.split("/")[0]:
            # Never echo it: what precedes '@' is a secret.
            raise ValueError(
                "a server URL carries credentials; use --nats-token-file, --nats-user with "
                "--nats-password-file, or EXIT_HANDLER_NATS_TOKEN instead"
            )
        try:
            parsed = urllib.parse.urlsplit(server)
            valid = bool(sep and scheme in {"nats", "tls"} and parsed.hostname)
            parsed.port  # noqa: B018  # raises ValueError for a port that is not a number
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(f"{server[:60]!r} is not a nats://host:port or tls://host:port URL")
    if not servers:
        raise ValueError("no server given")
    return servers


def _file(path: str | None) -> str | None:
    if path and not Path(path).is_file():
        raise ValueError(f"{path} is not a readable file")
    return path or None


def _secret(path: str, what: str) -> str:
    """A secret from a file, stripped of the newline a Secret mount may add; never echoed."""
    try:
        value = _text(path, MAX_SECRET).strip()
    except OSError as err:
        raise ValueError(f"cannot read the {what} file {path} ({type(err).__name__})") from None
    except ValueError:
        raise ValueError(f"the {what} file {path} is not a UTF-8 text of at most 64 KiB") from None
    if not value:
        raise ValueError(f"the {what} file {path} is empty")
    return value


def _auth(values: Mapping[str, Any], environ: Mapping[str, str]) -> NatsAuth:
    """At most one authentication method, secrets from files or the environment."""
    get = values.get
    token_file, password_file, secret_file = (
        get(key) for key in ("nats_token_file", "nats_password_file", "nats_auth_secret_file")
    )
    token = _secret(token_file, "token") if token_file else environ.get(ENV_PREFIX + "NATS_TOKEN")
    password = (
        _secret(password_file, "password")
        if password_file
        else environ.get(ENV_PREFIX + "NATS_PASSWORD")
    )
    user = get("nats_user") or None
    if user and not user.isprintable():
        raise ValueError("--nats-user contains control characters or invalid UTF-8")
    if secret_file:
        if token or user or password:
            raise ValueError("--nats-auth-secret-file replaces the token and user/password options")
        token, user, password = _eventbus_secret(secret_file)
    methods = [
        name
        for name, given in (
            ("token", token),
            ("user/password", user or password),
            ("--nats-creds-file", get("nats_creds_file")),
            ("--nats-nkey-seed-file", get("nats_nkey_seed_file")),
        )
        if given
    ]
    if len(methods) > 1:
        raise ValueError(f"give one way to authenticate, not {' and '.join(methods)}")
    if bool(user) != bool(password):
        raise ValueError("--nats-user needs a password (--nats-password-file) and vice versa")
    seed_file = _file(get("nats_nkey_seed_file"))
    if seed_file:
        _check_seed(seed_file)
    return NatsAuth(
        token=token,
        user=user,
        password=password,
        creds_file=_file(get("nats_creds_file")),
        nkey_seed_file=seed_file,
    )


def _check_seed(path: str) -> None:
    """A seed nats-py could not use would fail inside the client as an internal error."""
    import nkeys

    seed = _secret(path, "NKey seed")
    try:
        nkeys.from_seed(bytearray(seed.encode()))
    except (nkeys.NkeysError, ValueError):
        raise ValueError(f"the NKey seed file {path} holds no valid seed") from None


def _eventbus_secret(path: str) -> tuple[str | None, str | None, str | None]:
    """An Argo Events eventbus client secret: `token: …` or `username:`/`password:`."""
    import yaml

    text = _secret(path, "auth secret")
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError(f"{path} is not YAML (expected token: or username:/password:)") from None
    if not isinstance(loaded, dict):
        loaded = {}
    token, username, password = (loaded.get(key) for key in ("token", "username", "password"))
    if isinstance(token, str) and token:
        return token, None, None
    if isinstance(username, str) and username and isinstance(password, str) and password:
        return None, username, password
    raise ValueError(f"{path} holds neither token: nor username: and password:")
