"""Every run setting, parsed once from a flat run config into frozen dataclasses.

Keys are the dotted kebab-case keys of ``[tool.flwr.app.config]`` in
pyproject.toml (``prune.drop``, ``local.batch-size``); top-level keys
(``rounds``, ``seed``) live on :class:`Settings` itself. Nothing else in the
project reads ``context.run_config``.
"""

from __future__ import annotations

import dataclasses
import keyword
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedelta.common.registry import Registry

PARTITIONERS = ("movie", "dirichlet", "iid")
DATASETS = ("rotten-tomatoes", "bbc-news")
Q_MODES = ("unlabelled", "labelled")
DEVICES = ("auto", "cpu", "cuda")


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ValueError`` naming setting ``key`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(f"setting {key!r}: {message}")


def require_known(name: str, registry: Registry[Any], key: str) -> None:
    """Refuse a ``name`` that ``registry`` does not hold, listing the names it does."""
    require(name in registry, key, f"unknown {registry.kind} {name!r}; known: {', '.join(registry.names())}")


@dataclass(frozen=True)
class TaskSettings:
    name: str = "classification"
    chat_template: bool = True

    def __post_init__(self) -> None:
        from fedelta.common.tasks import TASKS

        require_known(self.name, TASKS, "task.name")


@dataclass(frozen=True)
class ModelSettings:
    path: str = ""
    max_length: int = 64
    sparse_base: str = ""

    def __post_init__(self) -> None:
        require(8 <= self.max_length <= 4096, "model.max-length", "must be in [8, 4096]")

    @property
    def source(self) -> str:
        """Where version 0's body comes from: ``model.sparse-base`` when set, else ``model.path``."""
        return self.sparse_base or self.path


@dataclass(frozen=True)
class DataSettings:
    name: str = "rotten-tomatoes"
    path: str = ""
    partition: str = "movie"
    alpha: float = 0.5
    test_size: int = 1000
    site_test_fraction: float = 0.05
    max_site_examples: int = 0

    def __post_init__(self) -> None:
        require(self.name in DATASETS, "data.name", f"must be one of {DATASETS}, got {self.name!r}")
        require(
            self.partition in PARTITIONERS,
            "data.partition",
            f"must be one of {PARTITIONERS}, got {self.partition!r}",
        )
        require(self.alpha > 0, "data.alpha", "must be > 0")
        require(self.test_size >= 1, "data.test-size", "must be >= 1")
        require(0 < self.site_test_fraction < 1, "data.site-test-fraction", "must be in (0, 1)")
        require(self.max_site_examples >= 0, "data.max-site-examples", "must be >= 0")


@dataclass(frozen=True)
class FederationSettings:
    num_sites: int = 4
    fraction_train: float = 1.0
    min_sites: int = 2
    cpus_per_site: float = 2.0
    gpus_per_site: float = 0.0
    ray_address: str = ""

    def __post_init__(self) -> None:
        require(self.num_sites >= 1, "federation.num-sites", "must be >= 1")
        require(0 < self.fraction_train <= 1, "federation.fraction-train", "must be in (0, 1]")
        require(
            1 <= self.min_sites <= self.num_sites,
            "federation.min-sites",
            f"must be in [1, federation.num-sites={self.num_sites}]",
        )
        require(self.cpus_per_site > 0, "federation.cpus-per-site", "must be > 0")
        require(self.gpus_per_site >= 0, "federation.gpus-per-site", "must be >= 0")
        require(
            self.ray_address == self.ray_address.strip(),
            "federation.ray-address",
            "must be HOST:PORT of a Ray head, without spaces (\"\" = start a local Ray)",
        )

    @property
    def sites_per_round(self) -> int:
        """Sites a round trains: Flower samples int(num_sites x fraction_train) of them, and at least min_sites."""
        return max(self.min_sites, int(self.num_sites * self.fraction_train))


@dataclass(frozen=True)
class LocalSettings:
    steps: int = 12
    batch_size: int = 16
    lr: float = 1e-4
    head_lr: float = 3e-3
    device: str = "auto"

    def __post_init__(self) -> None:
        require(self.steps >= 1, "local.steps", "must be >= 1")
        require(self.batch_size >= 1, "local.batch-size", "must be >= 1")
        require(0 < self.lr < 1, "local.lr", "must be in (0, 1)")
        require(0 < self.head_lr < 1, "local.head-lr", "must be in (0, 1)")
        require(self.device in DEVICES, "local.device", f"must be one of {DEVICES}, got {self.device!r}")


@dataclass(frozen=True)
class MethodSettings:
    """Which fine-tuning method trains, and where; each method's own options are sections named after it."""

    name: str = "full"
    targets: str = ""

    def __post_init__(self) -> None:
        from fedelta.common.methods import METHODS

        require_known(self.name, METHODS, "method.name")

    def target_patterns(self) -> list[str]:
        """``method.targets`` as a list of glob patterns over parameter names."""
        return [p.strip() for p in self.targets.split(",") if p.strip()]


@dataclass(frozen=True)
class OptimizerSettings:
    name: str = "adamw"
    weight_decay: float = 0.0
    lambda_: float = 0.1

    def __post_init__(self) -> None:
        from fedelta.common.optimizers import OPTIMIZERS

        require_known(self.name, OPTIMIZERS, "optimizer.name")
        require(self.weight_decay >= 0, "optimizer.weight-decay", "must be >= 0")
        require(self.lambda_ >= 0, "optimizer.lambda", "must be >= 0")


@dataclass(frozen=True)
class PruneSettings:
    name: str = "dare"
    drop: float = 0.9
    density: float = 0.0
    min_size: int = 1024
    q_mode: str = "unlabelled"
    calibration_size: int = 32
    recover_steps: int = 0

    def __post_init__(self) -> None:
        from fedelta.common.pruning import PRUNERS

        require_known(self.name, PRUNERS, "prune.name")
        require(0 <= self.drop < 1, "prune.drop", "must be in [0, 1)")
        require(self.q_mode in Q_MODES, "prune.q-mode", f"must be one of {Q_MODES}, got {self.q_mode!r}")
        require(self.calibration_size >= 1, "prune.calibration-size", "must be >= 1")
        require(self.recover_steps >= 0, "prune.recover-steps", "must be >= 0 (0 = no recovery)")
        require(0 <= self.density <= 1, "prune.density", "must be in [0, 1] (0 means 1 - prune.drop)")
        require(self.min_size >= 0, "prune.min-size", "must be >= 0")

    @property
    def keep(self) -> float:
        """Fraction of entries kept: ``prune.density`` when set, else ``1 - prune.drop``."""
        return self.density if self.density > 0 else 1.0 - self.drop


@dataclass(frozen=True)
class QuantSettings:
    values: str = "fp16"

    def __post_init__(self) -> None:
        from fedelta.common.quantization import VALUE_TYPES

        require_known(self.values, VALUE_TYPES, "quant.values")


@dataclass(frozen=True)
class FeedbackSettings:
    enabled: bool = False


@dataclass(frozen=True)
class UploadSettings:
    budget_bytes: int = 0

    def __post_init__(self) -> None:
        require(self.budget_bytes >= 0, "upload.budget-bytes", "must be >= 0 (0 = no budget)")


@dataclass(frozen=True)
class AggregateSettings:
    name: str = "fedavg"
    density: float = 0.2

    def __post_init__(self) -> None:
        from fedelta.common.aggregation import AGGREGATORS

        require_known(self.name, AGGREGATORS, "aggregate.name")
        require(0 < self.density <= 1, "aggregate.density", "must be in (0, 1]")


@dataclass(frozen=True)
class DownlinkSettings:
    max_chain: int = 8
    prune: str = "none"
    density: float = 0.1
    values: str = "fp32"
    budget_bytes: int = 0

    def __post_init__(self) -> None:
        from fedelta.common.pruning import PRUNERS
        from fedelta.common.quantization import VALUE_TYPES

        require(self.max_chain >= 1, "downlink.max-chain", "must be >= 1")
        require(0 < self.density <= 1, "downlink.density", "must be in (0, 1]")
        require_known(self.values, VALUE_TYPES, "downlink.values")
        require_known(self.prune, PRUNERS, "downlink.prune")
        require(
            not PRUNERS.get(self.prune).rescales,
            "downlink.prune",
            f"cannot be {self.prune!r}: the server keeps an error-feedback residual, which a rescaling pruner "
            "would make grow; use magnitude or none",
        )
        require(self.budget_bytes >= 0, "downlink.budget-bytes", "must be >= 0 (0 = no budget)")
        require(not self.budget_bytes or PRUNERS.get(self.prune).drops, "downlink.budget-bytes",
                f"needs downlink.prune to keep a chosen fraction (magnitude), not {self.prune!r}")

    @property
    def compressed(self) -> bool:
        """Whether the merged delta is pruned or quantized before it is sent."""
        return self.prune != "none" or self.values != "fp32" or self.budget_bytes > 0


@dataclass(frozen=True)
class StoreSettings:
    snapshot_every: int = 10

    def __post_init__(self) -> None:
        require(self.snapshot_every >= 0, "store.snapshot-every", "must be >= 0 (0 = only version 0)")


@dataclass(frozen=True)
class ValidateSettings:
    max_norm_ratio: float = 10.0
    max_decoded_bytes: int = 0
    max_weight_ratio: float = 4.0
    max_weight_growth: float = 2.0

    def __post_init__(self) -> None:
        require(
            self.max_norm_ratio == 0 or self.max_norm_ratio >= 1,
            "validate.max-norm-ratio",
            "must be 0 (off) or >= 1",
        )
        require(self.max_weight_ratio == 0 or self.max_weight_ratio >= 1, "validate.max-weight-ratio",
                "must be 0 (off) or >= 1")
        require(self.max_weight_growth == 0 or self.max_weight_growth >= 1, "validate.max-weight-growth",
                "must be 0 (off) or >= 1")
        require(self.max_decoded_bytes >= 0, "validate.max-decoded-bytes", "must be >= 0 (0 = from the model size)")


@dataclass(frozen=True)
class OutputSettings:
    dir: str = "runs/latest"
    state_dir: str = ""
    site_cache: str = ""


@dataclass(frozen=True)
class Settings:
    """The whole run configuration; build it with :meth:`from_run_config`.

    ``method_options`` holds the options of every registered fine-tuning method
    by its name (sections such as ``lora.rank``), each a frozen dataclass that
    its method module defines and validates; a method not configured gets its
    defaults.
    """

    rounds: int = 4
    seed: int = 0
    task: TaskSettings = field(default_factory=TaskSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    federation: FederationSettings = field(default_factory=FederationSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    method: MethodSettings = field(default_factory=MethodSettings)
    method_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    prune: PruneSettings = field(default_factory=PruneSettings)
    quant: QuantSettings = field(default_factory=QuantSettings)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    upload: UploadSettings = field(default_factory=UploadSettings)
    aggregate: AggregateSettings = field(default_factory=AggregateSettings)
    downlink: DownlinkSettings = field(default_factory=DownlinkSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    validate: ValidateSettings = field(default_factory=ValidateSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    def __post_init__(self) -> None:
        from fedelta.common.pruning import PRUNERS
        from fedelta.common.tasks import TASKS

        require(self.rounds >= 1, "rounds", "must be >= 1")
        require(
            not self.model.sparse_base or TASKS.get(self.task.name).takes_sparse_base,
            "model.sparse-base",
            "holds a sparse sequence classifier (fedelta prepare-sparse-base); it cannot start a "
            f"{self.task.name!r} federation",
        )
        object.__setattr__(self, "method_options", MappingProxyType(_every_method_options(self.method_options)))
        require(
            not (self.feedback.enabled and PRUNERS.get(self.prune.name).rescales),
            "feedback.enabled",
            f"cannot be combined with prune.name={self.prune.name!r}: its kept values are rescaled by "
            "1/q (q = keep for dare, fitted for darex-q), so the residual would carry that sampling noise "
            "and grow about 1/q-fold per round; "
            "use error feedback with a selecting pruner (magnitude) or turn it off",
        )
        if self.upload.budget_bytes:
            require(PRUNERS.get(self.prune.name).drops, "upload.budget-bytes",
                    f"needs a pruner that keeps a chosen fraction of each tensor, not prune.name={self.prune.name!r}")
            require(not PRUNERS.get(self.prune.name).needs_labels(self.prune), "upload.budget-bytes",
                    f"cannot be combined with prune.q-mode={self.prune.q_mode!r}: the labelled q is fitted on a "
                    "validation split for one fraction kept, not for each fraction the budget tries")
            require(not self.prune.recover_steps, "upload.budget-bytes",
                    "cannot be combined with prune.recover-steps: recovery changes the values after the budget "
                    "has fitted them, so the upload could outgrow it")

    def options_for(self, method: str) -> Any:
        """The options of fine-tuning method ``method``: as configured, else its defaults."""
        if method not in self.method_options:
            raise ValueError(f"unknown fine-tuning method {method!r}; known: {', '.join(self.method_options)}")
        return self.method_options[method]

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> Settings:
        """Parse a flat ``{"section.key-name": value}`` mapping; unknown keys are errors."""
        sections: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in run_config.items():
            section, _, name = key.rpartition(".")
            attr = _attribute(name)
            if not section:
                top[attr] = _checked_value(cls, attr, key, value)
                continue
            section_type = _section_type(section, key)
            sections.setdefault(section, {})[attr] = _checked_value(section_type, attr, key, value)
        built = {name: _section_type(name, name)(**values) for name, values in sections.items()}
        fixed = {name: value for name, value in built.items() if name in _fixed_sections()}
        options = {name: value for name, value in built.items() if name not in fixed}
        return cls(**top, **fixed, method_options=options)

    def to_run_config(self) -> dict[str, Any]:
        """The flat dotted mapping that :meth:`from_run_config` reads back."""
        flat: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                flat.update(_flat_section(f.name, value))
            elif isinstance(value, Mapping):
                for method, options in value.items():
                    flat.update(_flat_section(method, options))
            else:
                flat[f.name.replace("_", "-")] = value
        return flat

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """A copy with some dotted keys replaced."""
        return Settings.from_run_config({**self.to_run_config(), **overrides})


def _attribute(name: str) -> str:
    """Dataclass attribute for a kebab-case key; Python keywords get a trailing underscore."""
    attr = name.replace("-", "_")
    return f"{attr}_" if keyword.iskeyword(attr) else attr


def _key(attr: str) -> str:
    return attr.rstrip("_").replace("_", "-")


def _flat_section(section: str, value: Any) -> dict[str, Any]:
    return {f"{section}.{_key(sub.name)}": getattr(value, sub.name) for sub in fields(value)}


def _fixed_sections() -> dict[str, type]:
    """The sections every run has (``model``, ``prune``, ...), by name."""
    factories = {f.name: f.default_factory for f in fields(Settings)}
    return {name: factory for name, factory in factories.items() if dataclasses.is_dataclass(factory)}


def _method_sections() -> dict[str, type]:
    """The options type of every registered fine-tuning method that has options, by method name."""
    from fedelta.common.methods import METHODS

    return {entry.name: entry.unit.options_type for entry in METHODS if fields(entry.unit.options_type)}


def _section_type(section: str, key: str) -> type:
    sections = {**_method_sections(), **_fixed_sections()}
    if section not in sections:
        raise ValueError(f"unknown setting {key!r}: no section {section!r} (sections: {', '.join(sorted(sections))})")
    return sections[section]


def _every_method_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` (options by method name), completed with the defaults of every other registered method."""
    from fedelta.common.methods import METHODS

    for name in given:
        require_known(name, METHODS, "method_options")
    options: dict[str, Any] = {}
    for entry in METHODS:
        expected = entry.unit.options_type
        value = given.get(entry.name, expected())
        require(isinstance(value, expected), entry.name, f"expected {expected.__name__}, got {type(value).__name__}")
        options[entry.name] = value
    return options


def _checked_value(owner: type, attr: str, key: str, value: Any) -> Any:
    by_name = {f.name: f for f in fields(owner) if f.default is not dataclasses.MISSING}
    if attr not in by_name:
        names = ", ".join(_key(n) for n in by_name)
        raise ValueError(f"unknown setting {key!r} (known here: {names})")
    default = by_name[attr].default
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(
            f"setting {key!r}: expected {expected.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` from the command line; VALUE is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value
