"""`fedspine compare`: shared target, time-to-target, speedups, outputs, resume, errors.

The pure functions are tested on hand-made rows. One real compare (fedlora then fedspine on the
smoke preset, 2 rounds) runs once per module, in two calls on the same output directory: the
first runs fedlora alone, the second asks for both, so it must reuse fedlora (the resume path
of an interrupted compare) and run only fedspine.
"""

import json
import sys

import pytest
import torch

from fedspine.compare import (
    LatencySetup,
    check_reusable,
    default_methods,
    full_test_device_count,
    method_config,
    parse_methods,
    run_compare,
)
from fedspine.config import config_to_toml, load_config, read_toml
from fedspine.errors import ConfigError
from fedspine.methods.registry import method_names
from fedspine.report.comparison import (
    build_comparison,
    format_markdown,
    median_sparsity_device,
    peak_train_memory_by_tier,
    shared_target,
    speedup_of_reference,
)
from fedspine.report.record import read_rounds, read_summary
from fedspine.report.summary import accuracy_at_time, time_to_smoothed_target, time_to_target

torch.set_num_threads(1)

TARGET_SHARE = 0.75  # low enough that 2 smoke rounds reach it, so speedups are defined


def _part(tier, memory, ok=True):
    return {"tier": tier, "train_memory_mb": memory, "ok": ok}


def _row(sim_time, accuracy, participants=()):
    return {"sim_time_s": sim_time, "accuracy": accuracy, "participants": list(participants)}


def _summary(method, final_accuracy):
    return {
        "method": method,
        "final_accuracy": final_accuracy,
        "global_accuracy": final_accuracy,
        "accuracy_spread": 0.0,
        "mean_sparsity": 0.0,
        "comm_bytes": 2**20,
        "sim_time_s": 30.0,
        "wall_time_s": 1.0,
        "rounds": 3,
        "accuracy_definition": "device mean",
    }


# ----- pure functions ---------------------------------------------------------------------------
def test_shared_target_is_share_of_best_final_accuracy():
    assert shared_target([0.8, None, 0.9], 0.95) == pytest.approx(0.855)
    assert shared_target([0.6], 1.0) == 0.6
    assert shared_target([None, None], 0.95) is None


def test_time_to_target_is_first_round_at_or_above_the_bar():
    rows = [_row(10.0, 0.6), _row(20.0, None), _row(30.0, 0.8), _row(40.0, 0.9)]
    assert time_to_target(rows, 0.8) == 30.0
    assert time_to_target(rows, 0.5) == 10.0
    assert time_to_target(rows, 0.95) is None


def test_smoothed_time_to_target_needs_three_rounds_whose_mean_reaches_the_bar():
    # one lucky round crosses 0.9 at 20 s; the trailing 3-round mean first does at 70 s
    rows = [_row(10.0, 0.7), _row(20.0, 0.95), _row(30.0, 0.7), _row(40.0, None)]
    rows += [_row(50.0, 0.9), _row(60.0, 0.92), _row(70.0, 0.95)]
    assert time_to_target(rows, 0.9) == 20.0
    # unscored rounds are skipped: (0.7 + 0.9 + 0.92) / 3 < 0.9 at 60 s; (0.9+0.92+0.95)/3 >= 0.9
    assert time_to_smoothed_target(rows, 0.9) == 70.0
    assert time_to_smoothed_target(rows, 0.85) == 50.0  # mean 0.85 over 20, 30 and 50 s
    assert time_to_smoothed_target(rows[:2], 0.5) is None  # fewer than 3 scored rounds
    assert time_to_smoothed_target(rows, 0.8, window=1) == time_to_target(rows, 0.8)


def test_speedup_is_method_time_over_reference_time():
    assert speedup_of_reference(30.0, 10.0) == 3.0
    assert speedup_of_reference(10.0, 10.0) == 1.0
    assert speedup_of_reference(None, 10.0) is None
    assert speedup_of_reference(10.0, None) is None


def test_peak_memory_per_tier_counts_only_devices_that_trained():
    rows = [
        _row(1.0, 0.5, [_part("tx2", 100.0), _part("agx", 300.0), _part("tx2", 900.0, ok=False)]),
        _row(2.0, 0.6, [_part("tx2", 150.0), _part("agx", 250.0), _part("nx", None)]),
    ]
    assert peak_train_memory_by_tier(rows) == {"agx": 300.0, "tx2": 150.0}


def test_median_sparsity_device_is_a_real_middle_device():
    devices = [{"id": i, "prune_ratio": r} for i, r in enumerate([0.5, 0.1, 0.3, 0.4])]
    assert median_sparsity_device(devices)["id"] == 2  # sorted 0.1, 0.3, 0.4, 0.5 -> lower median
    assert median_sparsity_device(devices[:3])["id"] == 2


def _hand_runs(tmp_path):
    rows_fast = [_row(10.0, 0.7), _row(20.0, 0.86)]
    rows_slow = [_row(15.0, 0.5), _row(30.0, 0.7), _row(60.0, 0.88)]
    return {
        "fedspine": (tmp_path / "fedspine", _summary("fedspine", 0.9), rows_fast),
        "fedlora": (tmp_path / "fedlora", _summary("fedlora", 0.88), rows_slow),
    }


def test_build_comparison_shares_one_target_and_scores_speedups(tmp_path):
    comparison = build_comparison(_hand_runs(tmp_path), 0.95)
    assert comparison["target_accuracy"] == pytest.approx(0.855)
    by_method = {m["method"]: m for m in comparison["methods"]}
    assert [m["method"] for m in comparison["methods"]] == ["fedspine", "fedlora"]
    assert by_method["fedspine"]["time_to_target_s"] == 20.0
    assert by_method["fedlora"]["time_to_target_s"] == 60.0
    assert by_method["fedspine"]["speedup_of_fedspine"] == 1.0
    assert by_method["fedlora"]["speedup_of_fedspine"] == 3.0
    assert by_method["fedspine"]["time_to_smoothed_target_s"] is None  # only 2 rounds
    assert by_method["fedlora"]["smoothed_speedup_of_fedspine"] is None
    assert comparison["complete"] and comparison["accuracy_definition"] == "device mean"
    json.dumps(comparison, default=str)


def test_accuracy_at_common_time_reads_each_curve_at_the_shortest_run_end(tmp_path):
    """Runs of the same rounds end at different simulated times; the common time is the
    shortest run's, and each method is read at the last round it finished by then."""
    runs = _hand_runs(tmp_path)
    for _, summary, rows in runs.values():
        summary["sim_time_s"] = rows[-1]["sim_time_s"]
    comparison = build_comparison(runs, 0.95)
    assert comparison["common_time_s"] == 20.0
    by_method = {m["method"]: m for m in comparison["methods"]}
    assert by_method["fedspine"]["accuracy_at_common_time"] == 0.86
    assert by_method["fedlora"]["accuracy_at_common_time"] == 0.5  # its round at 15 s
    assert accuracy_at_time([_row(15.0, 0.5)], 10.0) is None  # nothing finished by then
    assert "| 86.0% |" in format_markdown(comparison)


def test_speedup_is_null_without_fedspine_or_when_it_never_reaches(tmp_path):
    runs = _hand_runs(tmp_path)
    without = build_comparison({"fedlora": runs["fedlora"]}, 0.95)
    assert without["methods"][0]["speedup_of_fedspine"] is None
    strict = build_comparison(runs, 1.0)  # bar 0.9: fedspine never reaches it, fedlora neither
    assert all(m["speedup_of_fedspine"] is None for m in strict["methods"])


def test_markdown_has_one_row_per_method_and_states_the_target(tmp_path):
    comparison = build_comparison(_hand_runs(tmp_path), 0.95, pending=["hetlora"])
    text = format_markdown(comparison)
    table = [line for line in text.splitlines() if line.startswith("| fed")]
    assert [line.split("|")[1].strip() for line in table] == ["fedspine", "fedlora"]
    assert "Target accuracy: 85.5%" in text and "device mean" in text
    assert "pending" in text and "hetlora" in text and not comparison["complete"]


def test_markdown_states_the_time_budget_and_each_runs_length(tmp_path):
    fixed = build_comparison(_hand_runs(tmp_path), 0.95)
    assert fixed["time_budget_s"] == 0.0 and "Fixed rounds" in format_markdown(fixed)
    budgeted = build_comparison(_hand_runs(tmp_path), 0.95, time_budget_s=60.0)
    text = format_markdown(budgeted)
    assert budgeted["time_budget_s"] == 60.0 and "reached 60 s" in text
    row = next(line for line in text.splitlines() if line.startswith("| fedspine"))
    assert "| 3 |" in row  # the rounds column (the hand summary's 3 rounds)


def test_default_methods_are_all_of_the_registry_with_fedspine_first():
    assert parse_methods(None) == list(default_methods())
    assert default_methods()[0] == "fedspine" and set(default_methods()) == set(method_names())
    assert len(default_methods()) == 11
    assert parse_methods("hetlora, fedspine,hetlora") == ["hetlora", "fedspine"]


def test_unknown_method_is_a_config_error_listing_valid_ones():
    with pytest.raises(ConfigError, match="fedlora, hetlora"):
        parse_methods("fedspine,fedsgd")
    with pytest.raises(ConfigError, match="fedsgd"):
        run_compare(load_config("smoke"), ["fedsgd"], None)


def test_cli_unknown_method_exits_2(monkeypatch, tmp_path):
    from fedspine.cli import main

    monkeypatch.setattr(sys, "argv", ["fedspine", "compare", "--methods", "nope", "-o", "x"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert not (tmp_path / "x").exists()


def test_generate_compare_rescores_fewer_devices_than_classify():
    classify = load_config(preset="smoke")
    generate = load_config(preset="llm-smoke")
    assert full_test_device_count(classify) == 16
    assert full_test_device_count(generate) == 2  # a greedy decode per answer
    assert full_test_device_count(generate, requested=5) == 5


def test_reuse_refuses_a_run_made_with_another_config(tmp_path):
    config = load_config("smoke", overrides=["run.rounds=2"])
    (tmp_path / "config.toml").write_text(config_to_toml(method_config(config, "fedlora")))
    check_reusable(tmp_path, method_config(config, "fedlora"))
    other = load_config("smoke", overrides=["run.rounds=3", "run.seed=1"])
    with pytest.raises(ConfigError, match=r"run\.rounds, run\.seed"):
        check_reusable(tmp_path, method_config(other, "fedlora"))


# ----- one real compare, resumed --------------------------------------------------------------
SMOKE_SETS = ["run.rounds=2"]
TEST_LATENCY = LatencySetup(batch=4, seq_len=64, repeats=5, warmup=1, threads=1)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "out"
    config = load_config("smoke", overrides=SMOKE_SETS)
    run_compare(config, ["fedlora"], out, TARGET_SHARE, latency=TEST_LATENCY)
    first_mtime = (out / "fedlora" / "summary.json").stat().st_mtime_ns
    messages, progressed = [], []

    def make_progress(method):
        from fedspine.report.progress import NullProgress

        progressed.append(method)
        return NullProgress()

    comparison = run_compare(
        config,
        ["fedlora", "fedspine"],
        out,
        TARGET_SHARE,
        make_progress=make_progress,
        say=messages.append,
        latency=TEST_LATENCY,
    )
    return {
        "out": out,
        "comparison": comparison,
        "messages": messages,
        "progressed": progressed,
        "first_mtime": first_mtime,
    }


@pytest.mark.slow
def test_comparison_json_target_and_methods(compared):
    out = compared["out"]
    on_disk = json.loads((out / "comparison.json").read_text())
    assert on_disk["methods"] == json.loads(json.dumps(compared["comparison"]["methods"]))
    assert [m["method"] for m in on_disk["methods"]] == ["fedlora", "fedspine"]
    finals = [read_summary(out / m)["final_accuracy"] for m in ("fedlora", "fedspine")]
    rescored = [m["final_accuracy_full_test"] for m in on_disk["methods"]]
    assert on_disk["target_share"] == TARGET_SHARE
    assert on_disk["target_basis"] == "final_accuracy_full_test"
    assert on_disk["target_accuracy"] == pytest.approx(TARGET_SHARE * max(rescored))
    assert on_disk["complete"] and on_disk["pending_methods"] == []
    assert on_disk["accuracy_definition"] == read_summary(out / "fedlora")["accuracy_definition"]
    for entry, final in zip(on_disk["methods"], finals, strict=True):
        assert entry["final_accuracy"] == final
        assert entry["run_dir"] == str(out / entry["method"])


@pytest.mark.slow
def test_time_to_target_matches_rounds_and_fedspine_speedup_is_one(compared):
    out, comparison = compared["out"], compared["comparison"]
    target = comparison["target_accuracy"]
    for entry in comparison["methods"]:
        rows = read_rounds(out / entry["method"])
        reached = [r for r in rows if r["accuracy"] is not None and r["accuracy"] >= target]
        assert reached, f"{entry['method']} never reached {target}"
        assert entry["time_to_target_s"] == reached[0]["sim_time_s"]
        before = [r for r in rows if r["sim_time_s"] < reached[0]["sim_time_s"]]
        assert all(r["accuracy"] is None or r["accuracy"] < target for r in before)
    by_method = {m["method"]: m for m in comparison["methods"]}
    assert by_method["fedspine"]["speedup_of_fedspine"] == 1.0
    assert by_method["fedlora"]["speedup_of_fedspine"] == pytest.approx(
        by_method["fedlora"]["time_to_target_s"] / by_method["fedspine"]["time_to_target_s"]
    )


@pytest.mark.slow
def test_finals_rescored_on_the_whole_test_set(compared):
    out, comparison = compared["out"], compared["comparison"]
    by_method = {m["method"]: m for m in comparison["methods"]}
    for method, entry in by_method.items():
        summary = read_summary(out / method)
        assert entry["final_full_test"]["devices"] == summary["num_devices"]  # 8 < 16: all
        assert entry["final_full_test"]["examples"] == 200  # smoke's whole held-out set
        assert 0.0 < entry["final_accuracy_full_test"] <= 1.0
    # Unpruned: every device holds the global model, so its whole-test-set final is exactly
    # the run's global accuracy (the same model on the same examples).
    fedlora = by_method["fedlora"]
    assert fedlora["final_accuracy_full_test"] == read_summary(out / "fedlora")["global_accuracy"]
    assert "whole test set" in (out / "comparison.md").read_text()


def test_bar_uses_rescored_finals_only_when_every_method_has_one(tmp_path):
    runs = _hand_runs(tmp_path)  # recorded finals 0.9 and 0.88
    both = {"fedspine": {"accuracy": 0.8}, "fedlora": {"accuracy": 0.84}}
    rescored = build_comparison(runs, 0.95, full_test=both)
    assert rescored["target_accuracy"] == pytest.approx(0.95 * 0.84)
    assert rescored["target_basis"] == "final_accuracy_full_test"
    assert rescored["methods"][1]["final_accuracy_full_test"] == 0.84
    partial = build_comparison(runs, 0.95, full_test={"fedspine": {"accuracy": 0.8}})
    assert partial["target_accuracy"] == pytest.approx(0.95 * 0.9)
    assert partial["target_basis"] == "final_accuracy"
    assert partial["methods"][1]["final_accuracy_full_test"] is None


@pytest.mark.slow
def test_memory_comm_and_latency_columns(compared):
    out, comparison = compared["out"], compared["comparison"]
    by_method = {m["method"]: m for m in comparison["methods"]}
    for method, entry in by_method.items():
        rows = read_rounds(out / method)
        tiers = {p["tier"] for r in rows for p in r["participants"] if p["ok"]}
        assert set(entry["peak_train_memory_mb_by_tier"]) == tiers
        assert all(mb > 0 for mb in entry["peak_train_memory_mb_by_tier"].values())
        assert entry["comm_bytes"] == read_summary(out / method)["comm_bytes"] > 0
    fedlora, fedspine = by_method["fedlora"], by_method["fedspine"]
    assert fedlora["inference_latency_ratio"] == 1.0  # unpruned: exactly 1, not timed
    assert fedlora["inference_latency"]["measured"] is False
    assert fedspine["inference_latency"]["measured"] is True
    assert fedspine["inference_latency"]["device_sparsity"] > 0.3
    assert 0.0 < fedspine["inference_latency_ratio"] < 1.0
    assert comparison["latency_setup"]["repeats"] == TEST_LATENCY.repeats


@pytest.mark.slow
def test_runs_share_the_config_but_the_method(compared):
    out = compared["out"]
    fedlora, fedspine = (
        read_toml(out / "fedlora" / "config.toml"),
        read_toml(out / "fedspine" / "config.toml"),
    )
    assert fedlora["run"].pop("method") == "fedlora" and fedspine["run"].pop("method") == "fedspine"
    assert fedlora == fedspine
    assert not list(out.glob("*.partial"))


@pytest.mark.slow
def test_markdown_and_plot(compared):
    out = compared["out"]
    text = (out / "comparison.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| fed")]
    assert [line.split("|")[1].strip() for line in rows] == ["fedlora", "fedspine"]
    assert "Target accuracy" in text and "held-out" in text
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_second_call_reused_the_finished_run(compared):
    out = compared["out"]
    assert compared["progressed"] == ["fedspine"]  # only fedspine was simulated
    assert (
        compared["messages"][0] == f"[1/2] fedlora: reusing the finished run in {out / 'fedlora'}"
    )
    assert compared["messages"][1] == "[2/2] fedspine"
    assert (out / "fedlora" / "summary.json").stat().st_mtime_ns == compared["first_mtime"]


@pytest.mark.slow
def test_rerun_reuses_everything_without_simulating(compared, monkeypatch):
    import fedspine.flower.simulation

    def refuse(*_args, **_kwargs):
        raise AssertionError("a finished method was simulated again")

    monkeypatch.setattr(fedspine.flower.simulation, "simulate", refuse)
    out = compared["out"]
    before = {m: (out / m / "summary.json").stat().st_mtime_ns for m in ("fedlora", "fedspine")}
    messages = []
    config = load_config("smoke", overrides=SMOKE_SETS)
    again = run_compare(
        config,
        ["fedlora", "fedspine"],
        out,
        TARGET_SHARE,
        say=messages.append,
        latency=TEST_LATENCY,
    )
    assert sum("reusing" in m for m in messages) == 2
    after = {m: (out / m / "summary.json").stat().st_mtime_ns for m in ("fedlora", "fedspine")}
    assert after == before
    assert again["target_accuracy"] == compared["comparison"]["target_accuracy"]
    with pytest.raises(ConfigError, match=r"run\.rounds"):
        run_compare(load_config("smoke"), ["fedlora"], out, TARGET_SHARE)
