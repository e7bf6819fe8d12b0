import tomllib
from pathlib import Path

import pytest

from fedelta.common.config import FederationSettings, Settings, parse_assignment

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
    ],
)
def test_bad_settings_name_the_field(overrides, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        Settings().with_overrides(overrides)


def test_feedback_with_a_rescaling_pruner_is_refused():
    with pytest.raises(ValueError, match="feedback.enabled"):
        Settings().with_overrides({"prune.name": "dare", "feedback.enabled": True})
    assert Settings().with_overrides({"prune.name": "magnitude", "feedback.enabled": True}).feedback.enabled


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
