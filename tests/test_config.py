import tomllib
from pathlib import Path

import pytest

from fedelta.common.config import FederationSettings, Settings, parse_assignment
from fedelta.common.registry import Registry

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_pyproject_catalogue_matches_dataclass_defaults():
    catalogue = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert Settings.from_run_config(catalogue) == Settings()
    assert set(catalogue) == set(Settings().to_run_config())


def test_round_trip_through_flat_mapping():
    settings = Settings().with_overrides({"prune.drop": 0.99, "data.alpha": 2, "rounds": 7})
    assert settings.prune.drop == 0.99 and settings.rounds == 7
    assert settings.data.alpha == 2.0 and isinstance(settings.data.alpha, float)
    assert Settings.from_run_config(settings.to_run_config()) == settings


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"prune.nope": 1}, "unknown setting 'prune.nope'"),
        ({"nosection.x": 1}, "no section 'nosection'"),
        ({"rounds": "three"}, "expected int"),
        ({"feedback.enabled": 1}, "expected bool"),
        ({"prune.drop": 1.0}, "prune.drop"),
        ({"federation.min-sites": 9}, "federation.min-sites"),
        ({"quant.values": "fp8"}, "quant.values"),
        ({"data.partition": "random"}, "data.partition"),
        ({"pafi.density": 0.0}, "pafi.density"),
        ({"lora.rank": 0}, "lora.rank"),
        ({"svfit.rank": 0}, "svfit.rank"),
        ({"hiwi.width": 0}, "hiwi.width"),
        ({"lora.alpha": 16}, "unknown setting 'lora.alpha'"),
        ({"full.rank": 1}, "no section 'full'"),
        ({"method.rank": 8}, "unknown setting 'method.rank'"),
        ({"federation.cpus-per-site": 0}, "federation.cpus-per-site"),
        ({"federation.gpus-per-site": -0.5}, "federation.gpus-per-site"),
        ({"federation.ray-address": " head:6379"}, "federation.ray-address"),
        ({"local.device": "tpu"}, "local.device"),
    ],
)
def test_bad_settings_name_the_field(overrides, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        Settings().with_overrides(overrides)


def _registries() -> dict[str, Registry]:
    from fedelta.common.aggregation import AGGREGATORS
    from fedelta.common.methods import METHODS
    from fedelta.common.optimizers import OPTIMIZERS
    from fedelta.common.pruning import PRUNERS
    from fedelta.common.quantization import VALUE_TYPES

    return {"method.name": METHODS, "prune.name": PRUNERS, "downlink.prune": PRUNERS, "quant.values": VALUE_TYPES,
            "downlink.values": VALUE_TYPES, "optimizer.name": OPTIMIZERS, "aggregate.name": AGGREGATORS}


@pytest.mark.parametrize("key", sorted(_registries()))
def test_an_unknown_unit_name_is_refused_with_the_known_ones(key):
    with pytest.raises(ValueError) as refused:
        Settings().with_overrides({key: "no-such-unit"})
    message = str(refused.value)
    assert key in message and "'no-such-unit'" in message
    assert all(name in message for name in _registries()[key].names())


def test_feedback_with_a_rescaling_pruner_is_refused():
    from fedelta.common.pruning import PRUNERS

    rescaling = [entry.name for entry in PRUNERS if entry.unit.rescales]
    assert rescaling
    for name in rescaling:
        with pytest.raises(ValueError, match="feedback.enabled"):
            Settings().with_overrides({"prune.name": name, "feedback.enabled": True})
        with pytest.raises(ValueError, match="downlink.prune"):
            Settings().with_overrides({"downlink.prune": name})
    assert Settings().with_overrides({"prune.name": "magnitude", "feedback.enabled": True}).feedback.enabled


def test_method_options_round_trip_and_default_per_method():
    settings = Settings().with_overrides({"method.name": "lora", "lora.rank": 4, "pafi.density": 0.05})
    assert settings.options_for("lora").rank == 4 and settings.options_for("pafi").density == 0.05
    assert settings.options_for("svfit").rank == 64 and settings.options_for("hiwi").width == 8
    flat = settings.to_run_config()
    assert flat["lora.rank"] == 4 and flat["pafi.density"] == 0.05 and "method.rank" not in flat
    assert Settings.from_run_config(flat) == settings and settings != Settings()
    with pytest.raises(TypeError):
        settings.method_options["lora"] = None  # type: ignore[index]
    with pytest.raises(ValueError, match="unknown fine-tuning method 'nope'"):
        settings.options_for("nope")


def test_keep_prefers_density_when_set():
    assert Settings().with_overrides({"prune.drop": 0.9}).prune.keep == pytest.approx(0.1)
    assert Settings().with_overrides({"prune.density": 0.25}).prune.keep == 0.25


def test_parse_assignment_reads_toml_values():
    assert parse_assignment("prune.drop=0.9") == ("prune.drop", 0.9)
    assert parse_assignment("feedback.enabled=false") == ("feedback.enabled", False)
    assert parse_assignment("method.name=lnbias") == ("method.name", "lnbias")
    assert parse_assignment("local.lr=5e-5") == ("local.lr", 5e-5)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignment("prune.drop")


def test_sites_per_round_follow_flowers_sampling_and_the_minimum():
    assert FederationSettings(num_sites=8, fraction_train=0.5, min_sites=2).sites_per_round == 4
    assert FederationSettings(num_sites=100, fraction_train=0.105, min_sites=2).sites_per_round == 10
    assert FederationSettings(num_sites=10, fraction_train=0.1, min_sites=3).sites_per_round == 3
    assert FederationSettings(num_sites=4).sites_per_round == 4
