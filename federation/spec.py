"""Federated job specifications, read from TOML.

A job spec names the datasets per city, the feature and target columns, the model,
the training schedule and the privacy settings. Example::

    name = "late-arrivals"
    rounds = 5

    [datasets]
    EWR = "ewr-flights"
    JFK = "jfk-flights"

    [features]
    categorical = ["month", "weekday", "hour", "carrier", "origin"]
    numeric = ["distance"]

    [target]
    column = "arr_delay"
    threshold = 15.0          # label = arr_delay > 15

    [model]
    kind = "logreg"           # "logreg", "mlp" or "package.module:ClassName"

    [privacy]
    mode = "none"             # "none", "dp" or "secagg"

In place of ``[datasets]``, a ``[match]`` section names datasets by classification
code and columns (``code = "04.5"``, ``columns = ["arr_delay", "carrier"]``). The
job resolves it against each city's catalog before it starts.
"""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from citymesh.errors import InvalidInput

MODEL_KINDS = ("logreg", "mlp")
PRIVACY_MODES = ("none", "dp", "secagg")
# The job id, or the name when no id is given, names the job's folder, so it
# follows the same rule as citymesh.job_files.JOB_ID_PATTERN (a test checks this).
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A custom model kind is a dotted module path, a colon and a class name, so it
# cannot name a file path.
CUSTOM_MODEL_KIND = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class FeatureSpec:
    """Input columns, and optionally a fixed encoding for them.

    When ``categories`` or ``scaling`` leave a column out, the job computes its
    vocabulary or its mean and standard deviation in a federated statistics step
    that shares only per-city aggregates.
    """

    categorical: tuple[str, ...] = ("month", "weekday", "hour", "carrier", "origin")
    numeric: tuple[str, ...] = ("distance",)
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    scaling: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetSpec:
    """The binary label ``column > threshold``. Rows without the column are dropped."""

    column: str = "arr_delay"
    threshold: float = 15.0


@dataclass(frozen=True)
class ModelSpec:
    """The torch model and its local optimizer."""

    kind: str = "logreg"
    hidden: tuple[int, ...] = (32, 16)
    learning_rate: float = 0.01
    batch_size: int = 512
    local_epochs: int = 1


@dataclass(frozen=True)
class PrivacySpec:
    """Privacy settings.

    ``mode = "dp"`` adds server-side differential privacy with fixed clipping;
    ``noise_multiplier`` and ``clipping_norm`` set it. ``mode = "secagg"`` aggregates
    with SecAgg+. ``epsilon_budget`` is the per-dataset budget the job may spend.
    """

    mode: str = "none"
    noise_multiplier: float = 0.0
    clipping_norm: float = 1.0
    delta: float = 1e-5
    epsilon_budget: float | None = None


@dataclass(frozen=True)
class MatchSpec:
    """Datasets named by classification code and columns instead of catalog ids.

    Each city contributes the one dataset in its catalog whose code starts with
    ``code`` and that has every column in ``columns``. ``cities`` limits the cities
    asked (all when empty). A spec that names ``datasets`` ignores this section.
    """

    code: str = ""
    columns: tuple[str, ...] = ()
    cities: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobSpec:
    """One federated training job."""

    name: str = "job"
    job_id: str = ""
    datasets: dict[str, str] = field(default_factory=dict)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    target: TargetSpec = field(default_factory=TargetSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    match: MatchSpec = field(default_factory=MatchSpec)
    rounds: int = 5
    seed: int = 0
    test_fraction: float = 0.2
    fraction_train: float = 1.0
    min_nodes: int = 2
    round_timeout_s: float = 600.0
    purpose: str = "research"
    consumer: str = ""
    budget: int = 0

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def id(self) -> str:
        """The job id, or the name when no id was given."""
        return self.job_id or self.name

    @classmethod
    def from_toml(cls, path: Path | str) -> JobSpec:
        """Read a job spec from a TOML file."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise InvalidInput(
                f"job spec file {str(path)!r} not found; pass the path of a TOML file"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(
                f"job spec {str(path)!r} is not valid TOML: {exc}"
            ) from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Build a job spec from a plain mapping (parsed TOML or JSON)."""
        data = dict(data)
        _reject_unknown(data, cls, "job spec")
        _check_types(data, cls, "job spec")
        sections = {
            "features": FeatureSpec,
            "target": TargetSpec,
            "model": ModelSpec,
            "privacy": PrivacySpec,
            "match": MatchSpec,
        }
        for key, section_cls in sections.items():
            if key in data:
                data[key] = _section(section_cls, data[key], key)
        if "datasets" in data:
            data["datasets"] = _string_table(data["datasets"], "datasets")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as plain JSON-compatible data (the inverse of from_dict)."""
        return json.loads(json.dumps(asdict(self)))

    def to_json(self) -> str:
        """Return the spec as canonical JSON (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """Parse a spec written by to_json."""
        return cls.from_dict(json.loads(text))


def _section(section_cls: type, value: Any, name: str) -> Any:
    if isinstance(value, section_cls):
        return value
    if not isinstance(value, dict):
        raise InvalidInput(f"job spec section [{name}] must be a table, got {value!r}")
    value = dict(value)
    _reject_unknown(value, section_cls, f"[{name}]")
    _check_types(value, section_cls, f"[{name}]")
    for key, item in value.items():
        if isinstance(item, list):
            value[key] = tuple(item)
    if section_cls is FeatureSpec:
        value["categories"] = {
            str(k): tuple(str(c) for c in v)
            for k, v in dict(value.get("categories", {})).items()
        }
        value["scaling"] = {
            str(k): (float(v[0]), float(v[1]))
            for k, v in dict(value.get("scaling", {})).items()
        }
    return section_cls(**value)


# The expected type of each scalar or list annotation in the spec dataclasses, as
# (accepted Python types, name shown in messages). bool is rejected separately
# because it is a subclass of int.
_SCALAR_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "a string"),
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "float | None": ((int, float, type(None)), "a number"),
}
_LIST_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "tuple[str, ...]": ((str,), "a list of strings"),
    "tuple[int, ...]": ((int,), "a list of integers"),
}


def _check_types(data: dict[str, Any], cls: type, where: str) -> None:
    """Raise InvalidInput naming the first key whose value has the wrong type.

    Fields of other annotations (the sections and the tables) are checked where
    they are converted.
    """
    annotations = {f.name: f.type for f in fields(cls)}
    for key, value in data.items():
        annotation = annotations[key]
        if annotation in _SCALAR_TYPES:
            accepted, expected = _SCALAR_TYPES[annotation]
            if _is_instance(value, accepted):
                continue
        elif annotation in _LIST_TYPES:
            accepted, expected = _LIST_TYPES[annotation]
            if isinstance(value, list | tuple) and all(
                _is_instance(item, accepted) for item in value
            ):
                continue
        else:
            continue
        raise InvalidInput(
            f"{where} key {key!r} must be {expected}, got {value!r} "
            f"({type(value).__name__})"
        )


def _is_instance(value: Any, accepted: tuple[type, ...]) -> bool:
    return isinstance(value, accepted) and not isinstance(value, bool)


def _string_table(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidInput(f"job spec section [{name}] must be a table, got {value!r}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidInput(
                f"[{name}] key {key!r} must be a string, got {item!r} "
                f"({type(item).__name__})"
            )
    return {str(key): item for key, item in value.items()}


def _reject_unknown(data: dict[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInput(
            f"unknown key(s) {unknown!r} in {where}; known keys are {sorted(known)!r}"
        )


def check_model_class(kind: str) -> None:
    """Import the module of a ``package.module:ClassName`` model kind and check it.

    Raises InvalidInput unless the attribute is a torch.nn.Module subclass. The
    built-in kinds pass unchecked. This runs the module's import-time code, so only
    the data scientist's own commands call it, never a node reviewing a job.
    """
    if kind in MODEL_KINDS:
        return
    module_name, _, class_name = kind.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(
            f"model kind {kind!r}: module {module_name!r} cannot be imported ({exc})"
        ) from exc
    model_class = getattr(module, class_name, None)
    if model_class is None:
        raise InvalidInput(
            f"model kind {kind!r}: module {module_name!r} has no attribute "
            f"{class_name!r}"
        )
    import torch.nn

    if not (isinstance(model_class, type) and issubclass(model_class, torch.nn.Module)):
        raise InvalidInput(
            f"model kind {kind!r} is not a torch.nn.Module subclass; name a class "
            "that subclasses torch.nn.Module"
        )


def _validate(spec: JobSpec) -> None:
    for key, value in (("name", spec.name), ("job_id", spec.job_id)):
        if value and not JOB_ID_PATTERN.fullmatch(value):
            raise InvalidInput(
                f"job spec {key} {value!r} is invalid: use 1 to 128 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )

    if spec.rounds < 1:
        raise InvalidInput(f"rounds must be at least 1, got {spec.rounds!r}")
    if not 0.0 < spec.test_fraction < 1.0:
        raise InvalidInput(
            f"test_fraction must lie strictly between 0 and 1, "
            f"got {spec.test_fraction!r}"
        )
    if not 0.0 < spec.fraction_train <= 1.0:
        raise InvalidInput(
            f"fraction_train must lie in (0, 1], got {spec.fraction_train!r}"
        )
    if spec.min_nodes < 1:
        raise InvalidInput(f"min_nodes must be at least 1, got {spec.min_nodes!r}")
    if spec.round_timeout_s <= 0:
        raise InvalidInput(
            f"round_timeout_s must be positive, got {spec.round_timeout_s!r}"
        )
    model = spec.model
    if model.kind not in MODEL_KINDS and not CUSTOM_MODEL_KIND.fullmatch(model.kind):
        raise InvalidInput(
            f"model kind {model.kind!r} is unknown; use one of {MODEL_KINDS!r} "
            "or 'package.module:ClassName' for your own torch module"
        )
    if model.learning_rate <= 0 or model.batch_size < 1 or model.local_epochs < 1:
        raise InvalidInput(
            "model needs learning_rate > 0, batch_size >= 1 and local_epochs >= 1, "
            f"got {model.learning_rate!r}, {model.batch_size!r}, "
            f"{model.local_epochs!r}"
        )
    features = spec.features
    if not features.categorical and not features.numeric:
        raise InvalidInput("features must name at least one column")
    overlap = set(features.categorical) & set(features.numeric)
    if overlap:
        raise InvalidInput(
            f"column(s) {sorted(overlap)!r} are listed as both categorical and numeric"
        )
    leaked = spec.target.column in features.categorical + features.numeric
    if leaked:
        raise InvalidInput(
            f"target column {spec.target.column!r} is also a feature; remove it "
            "from [features]"
        )
    for column, (_, std) in features.scaling.items():
        if std <= 0:
            raise InvalidInput(
                f"scaling for {column!r} needs a positive standard deviation, "
                f"got {std!r}"
            )
    privacy = spec.privacy
    if privacy.mode not in PRIVACY_MODES:
        raise InvalidInput(
            f"privacy mode {privacy.mode!r} is unknown; use one of {PRIVACY_MODES!r}"
        )
    if privacy.noise_multiplier < 0 or privacy.clipping_norm <= 0:
        raise InvalidInput(
            "privacy needs noise_multiplier >= 0 and clipping_norm > 0, got "
            f"{privacy.noise_multiplier!r} and {privacy.clipping_norm!r}"
        )
    if not 0.0 < privacy.delta < 1.0:
        raise InvalidInput(f"privacy delta must lie in (0, 1), got {privacy.delta!r}")
