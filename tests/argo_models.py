"""Strict schema checks for the Kubernetes manifests the project ships (tests only).

Why: Kubernetes and Argo drop a key they do not know (`retryStratgy`, a field one level too deep)
without a word, so the setting it was meant to make silently does not exist. `validate` turns
every such key into a test failure, and lists all of them at once.

Where the schemas come from:

- Argo Workflows kinds: hera's pydantic models, generated from Argo's OpenAPI spec.
- Argo Events EventSource and Sensor: hera's models of Argo Events.
- A few generated types do not describe the JSON really read (Go types with their own
  MarshalJSON: Argo Events' Amount and Int64OrString, free-form Plugin and FieldsV1; and
  Quantity, a plain str in hera where Kubernetes also takes a number and checks a grammar).
  Those values are checked here (`_RAW`) and pydantic gets a placeholder. An embedded object
  (a Sensor trigger's `source.resource`) is validated as a manifest of its own.
- Core kinds (ConfigMap, Secret, ServiceAccount, RBAC): the strict JSON schemas
  (`additionalProperties: false`) bundled by kubernetes-validate, for Kubernetes `K8S_VERSION`.

hera's models ignore unknown keys, so strictness is added in two steps. First the manifest is
walked beside the model's fields: a key that is no field's JSON name is reported even when
validation fails elsewhere. Then, if pydantic accepts it, the model is dumped back (JSON mode,
by alias, unset fields left out) and compared with what went in: a key that did not come back,
or a value whose JSON type changed (pydantic's lax mode reads "300" as 300 and "yes" as true), is
reported too.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import hera.events.models as events
import hera.workflows.models as workflows
from hera.events.models.io.k8s.apimachinery.pkg.api.resource import Quantity as EventsQuantity
from hera.events.models.io.k8s.apimachinery.pkg.apis.meta.v1 import FieldsV1 as EventsFieldsV1
from jsonschema import Draft202012Validator
from pydantic import BaseModel, RootModel, ValidationError
from referencing import Registry, Resource

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

ARGO: Final = "argoproj.io/v1alpha1"
RBAC: Final = "rbac.authorization.k8s.io/v1"
K8S_VERSION: Final = "v1.30.0"
"""The Kubernetes release whose core schemas are used: a folder of kubernetes-validate."""

_Path = tuple[str | int, ...]

_ARGO_MODELS: Final[Mapping[tuple[str, str], type[BaseModel]]] = {
    (ARGO, "Workflow"): workflows.Workflow,
    (ARGO, "WorkflowTemplate"): workflows.WorkflowTemplate,
    (ARGO, "ClusterWorkflowTemplate"): workflows.ClusterWorkflowTemplate,
    (ARGO, "CronWorkflow"): workflows.CronWorkflow,
    (ARGO, "EventSource"): events.EventSource,
    (ARGO, "Sensor"): events.Sensor,
}
_CORE_SCHEMAS: Final[Mapping[tuple[str, str], str]] = {
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "Secret"): "secret-v1.json",
    ("v1", "ServiceAccount"): "serviceaccount-v1.json",
    (RBAC, "Role"): "role-rbac-v1.json",
    (RBAC, "RoleBinding"): "rolebinding-rbac-v1.json",
    (RBAC, "ClusterRole"): "clusterrole-rbac-v1.json",
    (RBAC, "ClusterRoleBinding"): "clusterrolebinding-rbac-v1.json",
}
SUPPORTED_KINDS: Final[frozenset[tuple[str, str]]] = frozenset(_ARGO_MODELS) | frozenset(
    _CORE_SCHEMAS
)
"""The (apiVersion, kind) pairs `validate` checks; any other manifest is a SchemaError."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int_or_string(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


# Kubernetes' quantity grammar (apimachinery resource.Quantity): number, then one suffix.
_QUANTITY: Final = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?\Z")


def _is_quantity(value: Any) -> bool:
    return _is_number(value) or (isinstance(value, str) and bool(_QUANTITY.match(value)))


# Generated types whose schema is not the JSON really read, mostly Go types with their own
# MarshalJSON: what the value must be instead, and what pydantic is then given in its place.
_RAW: Final[Mapping[type[BaseModel], tuple[Callable[[Any], bool], str, Any]]] = {
    events.Amount: (_is_number, "a number", {}),  # schema says {value: base64}
    events.Int64OrString: (_is_int_or_string, "an integer or a string", {}),  # an object there
    workflows.Plugin: (_is_object, "an object", {}),  # free-form plugin configuration
    workflows.FieldsV1: (_is_object, "an object", {}),  # managedFields, free-form
    EventsFieldsV1: (_is_object, "an object", {}),
    # A plain string in hera; Kubernetes takes `cpu: 1` too, and checks the grammar.
    workflows.Quantity: (_is_quantity, "a quantity such as 100m, 64Mi or 1", "0"),
    EventsQuantity: (_is_quantity, "a quantity such as 100m, 64Mi or 1", "0"),
}
# A whole Kubernetes object inside another (a Sensor trigger's source.resource).
_EMBEDDED: Final[frozenset[type[BaseModel]]] = frozenset({events.K8SResource})
_PLAIN_KEY: Final = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]*\Z")


class Problem(NamedTuple):
    """One bad spot: `path` as `spec.templates[0].retryStratgy`, and what is wrong there."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class SchemaError(AssertionError):
    """The manifest does not match its schema; the message lists every problem, one a line.

    An AssertionError so that pytest shows it as a plain test failure.
    """

    def __init__(self, title: str, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        lines = "".join(f"\n  {problem}" for problem in self.problems)
        super().__init__(f"{title}: {len(self.problems)} problem(s):{lines}")

    @property
    def paths(self) -> tuple[str, ...]:
        """The bad paths alone, for tests that assert where a problem is."""
        return tuple(problem.path for problem in self.problems)


def validate(manifest: dict[str, Any]) -> None:
    """Raise SchemaError unless `manifest` is exactly what its kind's schema allows."""
    check = _Check()
    check.manifest(manifest, ())
    if check.problems:
        raise SchemaError(
            _title(manifest),
            (Problem(_format(path), "; ".join(why)) for path, why in check.problems.items()),
        )


class _Check:
    """Collects problems by path (reasons in the order found, each once) over one manifest."""

    def __init__(self) -> None:
        self.problems: dict[_Path, list[str]] = {}

    def add(self, path: _Path, reason: str) -> None:
        reasons = self.problems.setdefault(path, [])
        if reason not in reasons:
            reasons.append(reason)

    def manifest(self, data: Any, path: _Path) -> None:
        """Check one Kubernetes object against the schema its apiVersion and kind select."""
        if not isinstance(data, dict):
            self.add(path, f"expected a Kubernetes object, got {_describe(data)}")
            return
        api, kind = data.get("apiVersion"), data.get("kind")
        key = (str(api), str(kind))  # str(): a list there must not break the lookup
        if key in _ARGO_MODELS:
            self.argo(_ARGO_MODELS[key], data, path)
        elif key in _CORE_SCHEMAS:
            self.core(_CORE_SCHEMAS[key], data, path)
        else:
            supported = ", ".join(f"{a} {k}" for a, k in sorted(SUPPORTED_KINDS))
            self.add(
                (*path, "kind"),
                f"apiVersion {api!r} kind {kind!r} is not supported (supported: {supported})",
            )

    def argo(self, model: type[BaseModel], data: dict[str, Any], path: _Path) -> None:
        """Walk for unknown keys, validate with pydantic, then compare the round trip."""
        fields = _fields(model)
        # hera's EventSource and Sensor have no apiVersion/kind fields: dispatch checked them.
        body = {k: v for k, v in data.items() if k in fields or k not in ("apiVersion", "kind")}
        clean = self.walk(model, body, path)
        try:
            instance = model.model_validate(clean)
        except ValidationError as err:
            self.pydantic_errors(err, clean, path)
            return
        self.compare(
            clean, instance.model_dump(mode="json", by_alias=True, exclude_unset=True), path
        )

    def walk(self, annotation: Any, value: Any, path: _Path) -> Any:
        """Report keys the model lacks; return `value` without them and with placeholders.

        Wrong types are left for pydantic, which reports them better.
        """
        members = _members(annotation)
        kind = members[0] if len(members) == 1 else Any  # a union of scalars, as str | int
        origin = typing.get_origin(kind)
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(kind)
            value = [self.walk(item, v, (*path, i)) for i, v in enumerate(value)]
        elif origin is dict and isinstance(value, dict):
            _, item = typing.get_args(kind)
            value = {k: self.walk(item, v, (*path, k)) for k, v in value.items()}
        elif isinstance(kind, type) and issubclass(kind, BaseModel):
            value = self.walk_model(kind, value, path)
        return value

    def walk_model(self, model: type[BaseModel], value: Any, path: _Path) -> Any:
        """`walk` for one model: its keys, or the JSON of a mis-generated type checked here."""
        if model in _RAW:
            accepts, expected, placeholder = _RAW[model]
            if not accepts(value):
                self.add(path, f"expected {expected}, got {_describe(value)}")
            return placeholder
        if model in _EMBEDDED:
            self.manifest(value, path)
            return {}
        if issubclass(model, RootModel):
            return self.walk(model.model_fields["root"].annotation, value, path)
        if not isinstance(value, dict):
            return value
        fields = _fields(model)
        clean: dict[Any, Any] = {}
        for key, item in value.items():
            if key in fields:
                clean[key] = self.walk(fields[key], item, (*path, key))
            else:
                self.add((*path, key), "not in the Argo model" + _did_you_mean(key, fields))
        return clean

    def pydantic_errors(self, err: ValidationError, data: Any, path: _Path) -> None:
        """Map pydantic's error locations onto paths of the manifest, one line per path.

        A location also holds union member tags (`str`, `int`): it is followed only as far as
        it leads through the data.
        """
        invalid: dict[_Path, tuple[Any, list[str]]] = {}
        for error in err.errors(include_url=False):
            where: list[str | int] = []
            node = data
            for part in error["loc"]:
                found, node = _child(node, part)
                if not found:
                    break
                where.append(part)
            if error["type"] == "missing":
                self.add((*path, *where, error["loc"][-1]), "required but missing")
            else:
                _, messages = invalid.setdefault((*path, *where), (error["input"], []))
                messages.append(error["msg"])
        for where_, (value, messages) in invalid.items():
            self.add(where_, f"{_describe(value)} is invalid: {' or '.join(messages)}")

    def compare(self, given: Any, dumped: Any, path: _Path) -> None:
        """Report keys the round trip lost and values whose JSON type it changed."""
        if isinstance(given, dict) and isinstance(dumped, dict):
            for key, value in given.items():
                if key in dumped:
                    self.compare(value, dumped[key], (*path, key))
                else:
                    self.add((*path, key), "dropped by the Argo model")
        elif isinstance(given, list) and isinstance(dumped, list) and len(given) == len(dumped):
            for i, (value, back) in enumerate(zip(given, dumped, strict=True)):
                self.compare(value, back, (*path, i))
        elif _json_type(given) != _json_type(dumped) or isinstance(given, list):
            self.add(path, f"{_describe(given)} is read as {_describe(dumped)}")

    def core(self, filename: str, data: dict[str, Any], path: _Path) -> None:
        """Validate a core Kubernetes object with kubernetes-validate's strict JSON schema."""
        for error in _core_validator(filename).iter_errors(data):
            where = (*path, *error.absolute_path)
            if error.validator == "additionalProperties" and isinstance(error.instance, dict):
                known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
                for key in error.instance:
                    if key not in known:
                        self.add(
                            (*where, key),
                            "not in the Kubernetes schema" + _did_you_mean(key, known),
                        )
            else:
                self.add(where, f"{_describe(error.instance)} is invalid: {error.message}")


def _child(node: Any, part: str | int) -> tuple[bool, Any]:
    """`(True, node[part])` if the data has that key or index, else `(False, None)`."""
    if isinstance(node, dict):
        return part in node, node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return True, node[part]
    return False, None


@cache
def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """The model's fields by the JSON name Kubernetes uses (the alias, else the name)."""
    return {field.alias or name: field.annotation for name, field in model.model_fields.items()}


def _members(annotation: Any) -> list[Any]:
    """The types a value may have: unions spread, None and Annotated left out."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    if annotation is type(None):
        return []
    return [annotation]


@cache
def _registry() -> Registry[Any]:
    """kubernetes-validate's shared definitions, which every kind's schema refers to."""
    text = _schema_folder().joinpath("_definitions.json").read_text(encoding="utf-8")
    definitions = json.loads(text)
    registry: Registry[Any] = Registry().with_resource(
        definitions["$id"], Resource.from_contents(definitions)
    )
    return registry


@cache
def _core_validator(filename: str) -> Draft202012Validator:
    schema = json.loads(_schema_folder().joinpath(filename).read_text(encoding="utf-8"))
    return Draft202012Validator(schema, registry=_registry())


def _schema_folder() -> Traversable:
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    strict = folder / f"{K8S_VERSION}-local-strict"
    if not strict.is_dir():
        have = sorted(p.name for p in folder.iterdir() if p.name.endswith("-strict"))
        raise FileNotFoundError(f"kubernetes-validate has no {strict.name}; it has {have}")
    return strict


def _did_you_mean(key: object, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


_JSON_TYPES: Final[tuple[tuple[Any, str], ...]] = (
    (bool, "boolean"),  # before int: a bool is an int in Python
    (int | float, "number"),
    (str | date, "string"),  # a YAML timestamp loads as a datetime, it is a string in JSON
    (dict, "object"),
    (list, "array"),
    (type(None), "null"),
)


def _json_type(value: Any) -> str:
    """The JSON type of a value as YAML loads it."""
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), str(type(value)))


def _describe(value: Any) -> str:
    text = json.dumps(value, default=str)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({_json_type(value)})"


def _format(path: _Path) -> str:
    """`spec.templates[0].retryStrategy`, with odd keys quoted: `labels["app.kubernetes.io/x"]`."""
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part, default=str)}]"
    return text or "<manifest>"


def _title(manifest: Any) -> str:
    if not isinstance(manifest, dict):
        return "manifest"
    metadata = manifest.get("metadata")
    name = ""
    if isinstance(metadata, dict):
        name = str(metadata.get("name") or metadata.get("generateName") or "")
    return " ".join(str(part) for part in (manifest.get("kind") or "manifest", name) if part)
