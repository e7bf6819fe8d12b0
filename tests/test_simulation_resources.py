"""What each virtual site asks Ray for, the Ray cluster a simulation joins, and sites Ray could not place."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedelta.common.config import Settings
from fedelta.simulations import engine
from fedelta.simulations.engine import backend_config, refuse_unplaceable_sites

PROJECT = Path(__file__).resolve().parent.parent


def test_a_local_ray_gets_the_resources_of_each_site():
    federation = Settings().with_overrides({"federation.cpus-per-site": 1, "federation.gpus-per-site": 0.5}).federation
    assert backend_config(federation) == {
        "client_resources": {"num_cpus": 1.0, "num_gpus": 0.5},
        "init_args": {"include_dashboard": False},
    }


def test_joining_a_cluster_passes_its_address_and_no_node_resources():
    federation = Settings().with_overrides({"federation.ray-address": "10.0.0.5:6379"}).federation
    config = backend_config(federation)
    assert config["init_args"] == {"include_dashboard": False, "address": "10.0.0.5:6379"}
    assert config["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.0}


def test_the_engine_hands_flower_that_backend_config(monkeypatch, tmp_path):
    flower = importlib.import_module("flwr.simulation.run_simulation")
    calls = []
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setattr(flower, "_run_simulation", lambda **kwargs: calls.append(kwargs))
    overrides = {"federation.num-sites": 3, "federation.cpus-per-site": 0.5, "federation.ray-address": "head:6379",
                 "output.dir": str(tmp_path)}
    federation = Settings().with_overrides(overrides).federation
    engine.run_flower_simulation(overrides, federation)
    assert [(call["num_supernodes"], call["backend_config"]) for call in calls] == [(3, backend_config(federation))]


@pytest.mark.parametrize(("overrides", "key"), [
    ({"federation.cpus-per-site": 4}, "federation.cpus-per-site"),
    ({"federation.gpus-per-site": 0.5}, "federation.gpus-per-site"),
    ({"local.device": "cuda"}, "local.device"),
    ({"local.device": "cuda", "federation.ray-address": "head:6379"}, "local.device"),
])
def test_sites_that_ray_could_not_place_are_refused(overrides, key):
    settings = Settings().with_overrides(overrides)
    with pytest.raises(ValueError, match=f"setting '{key}'"):
        refuse_unplaceable_sites(settings, cpus=2, gpus=0)


@pytest.mark.parametrize("overrides", [
    {},
    {"federation.cpus-per-site": 0.5, "federation.gpus-per-site": 0.5, "local.device": "cuda"},
    {"federation.cpus-per-site": 8, "federation.gpus-per-site": 1, "federation.ray-address": "head:6379"},
])
def test_sites_that_fit_are_accepted(overrides):
    refuse_unplaceable_sites(Settings().with_overrides(overrides), cpus=2, gpus=1)


def test_the_command_refuses_more_cpus_per_site_than_this_machine_has_before_starting(tmp_path):
    too_many = (os.cpu_count() or 1) + 1
    command = [sys.executable, "-m", "fedelta", "simulate", "--preset", "smoke",
               "--set", f"federation.cpus-per-site={too_many}", "--out", str(tmp_path / "run")]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "federation.cpus-per-site" in done.stderr
    assert not (tmp_path / "run").exists()
