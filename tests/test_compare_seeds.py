"""`fedspine compare --seeds`: the per-seed summary (pure) and its orchestration (no simulation)."""

from __future__ import annotations

import json
import math
import sys

import pytest

import fedspine.compare
from fedspine.compare import parse_seeds, run_seeded_compare
from fedspine.config import load_config
from fedspine.errors import ConfigError
from fedspine.report.record import write_json_atomic
from fedspine.report.seeds import (
    aggregate_seeds,
    format_seeds_markdown,
    geometric_mean,
    mean_curve,
    mean_std,
    method_over_seeds,
)


def _entry(method, final, time_s, speedup, smoothed_speedup=None, run_dir="x"):
    return {
        "method": method,
        "final_accuracy": final,
        "final_accuracy_full_test": None if final is None else final - 0.01,
        "global_accuracy": final,
        "mean_sparsity": 0.5 if method == "fedspine" else 0.0,
        "time_to_target_s": time_s,
        "time_to_smoothed_target_s": None if time_s is None else time_s + 1,
        "speedup_of_fedspine": speedup,
        "smoothed_speedup_of_fedspine": smoothed_speedup,
        "comm_bytes": 2**20,
        "inference_latency_ratio": 0.5 if method == "fedspine" else 1.0,
        "rounds": 10,
        "sim_time_s": 30.0,
        "run_dir": run_dir,
    }


def _comparison(target, *entries):
    return {"target_accuracy": target, "target_share": 0.95, "complete": True, "methods": entries}


def _per_seed():
    return {
        0: _comparison(
            0.9, _entry("fedspine", 0.94, 10.0, 1.0), _entry("fedlora", 0.92, 20.0, 2.0)
        ),
        1: _comparison(0.8, _entry("fedspine", 0.90, 8.0, 1.0), _entry("fedlora", 0.95, 4.0, 0.5)),
        2: _comparison(
            0.85,
            _entry("fedspine", 0.93, 12.0, 1.0),
            _entry("fedlora", 0.89, None, None),
            _entry("hetlora", 0.91, 24.0, 2.0),
        ),
    }


# ----- pure functions ---------------------------------------------------------------------------
def test_mean_std_skips_missing_values_and_uses_the_sample_std():
    assert mean_std([1.0, None, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2}
    assert mean_std([5.0]) == {"mean": 5.0, "std": 0.0, "n": 1}
    assert mean_std([None]) == {"mean": None, "std": None, "n": 0}


def test_speedups_average_geometrically():
    stats = geometric_mean([2.0, 0.5, None])
    assert stats["geomean"] == pytest.approx(1.0)
    assert (stats["min"], stats["max"], stats["n"]) == (0.5, 2.0, 2)
    assert geometric_mean([None, 0.0])["geomean"] is None


def test_method_over_seeds_pairs_the_accuracy_gain_by_seed():
    fedlora = method_over_seeds("fedlora", _per_seed())
    assert fedlora["seeds"] == [0, 1, 2]
    gains = fedlora["final_gain_of_fedspine"]  # 0.94-0.92, 0.90-0.95, 0.93-0.89
    assert gains["mean"] == pytest.approx((0.02 - 0.05 + 0.04) / 3)
    assert gains["n"] == 3
    assert fedlora["full_test_gain_of_fedspine"]["mean"] == pytest.approx(gains["mean"])
    assert fedlora["final_accuracy_full_test"]["mean"] == pytest.approx(
        (0.92 + 0.95 + 0.89) / 3 - 0.01
    )
    assert fedlora["time_to_target_s"] == {
        "mean": pytest.approx(12.0),
        "std": pytest.approx(math.sqrt(128)),
        "n": 2,
    }
    assert fedlora["speedup_of_fedspine"]["geomean"] == pytest.approx(1.0)  # 2x and 0.5x
    assert fedlora["speedup_of_fedspine"]["n"] == 2  # seed 2 never reached the bar
    assert fedlora["per_seed"]["2"]["time_to_target_s"] is None
    hetlora = method_over_seeds("hetlora", _per_seed())
    assert hetlora["seeds"] == [2]  # only seed 2 ran it
    assert hetlora["final_gain_of_fedspine"]["mean"] == pytest.approx(0.02)


def test_aggregate_keeps_method_order_and_each_seeds_bar():
    aggregate = aggregate_seeds(_per_seed(), time_budget_s=30.0)
    assert [m["method"] for m in aggregate["methods"]] == ["fedspine", "fedlora", "hetlora"]
    assert aggregate["seeds"] == [0, 1, 2]
    assert aggregate["target_accuracy_by_seed"] == {"0": 0.9, "1": 0.8, "2": 0.85}
    assert aggregate["seed_dirs"] == {"0": "seed-0", "1": "seed-1", "2": "seed-2"}
    assert aggregate["complete"] and aggregate["time_budget_s"] == 30.0
    fedspine = aggregate["methods"][0]
    assert fedspine["final_gain_of_fedspine"]["mean"] == pytest.approx(0.0)
    json.dumps(aggregate)


def test_markdown_states_reached_counts_speedups_and_bars():
    text = format_seeds_markdown(aggregate_seeds(_per_seed(), 30.0))
    fedlora = next(line for line in text.splitlines() if line.startswith("| fedlora "))
    assert "12.0 (2/3)" in fedlora  # mean time over the 2 seeds that reached the bar
    assert "1.00x [0.50–2.00] (2/3)" in fedlora
    assert "+0.3 ± 4.7" in fedlora  # fedspine's paired gain, points
    assert "seed 1: 80.0%" in text and "30 s" in text
    assert text.count("\n| ") == 4  # header + 3 methods


def test_mean_curve_reads_each_seed_at_each_time():
    seed_a = [{"sim_time_s": 1.0, "accuracy": 0.5}, {"sim_time_s": 3.0, "accuracy": 0.9}]
    seed_b = [{"sim_time_s": 2.0, "accuracy": 0.7}]
    assert mean_curve([seed_a, seed_b], [0.5, 1.0, 2.0, 3.0]) == [
        None,
        0.5,
        pytest.approx(0.6),
        pytest.approx(0.8),
    ]


def test_parse_seeds():
    assert parse_seeds("2, 0,2") == [2, 0]
    assert parse_seeds(None) == []
    for bad in ("a,b", "-1", ","):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


# ----- orchestration: one comparison per seed, then the summary -----------------------------------
def _fake_compare(calls):
    """A run_compare stand-in: one rounds.jsonl per method and a comparison, no simulation."""

    def fake_compare(config, names, out, target_share=0.95, **_kwargs):
        seed = config.run.seed
        calls.append((seed, list(names), out))
        entries = []
        for i, method in enumerate(names):
            run_dir = out / method
            run_dir.mkdir(parents=True)
            rows = [{"sim_time_s": 5.0 * (i + 1), "accuracy": 0.8 + 0.01 * seed}]
            (run_dir / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            entries.append(_entry(method, 0.9, 5.0 * (i + 1), i + 1.0, run_dir=str(run_dir)))
        comparison = _comparison(0.85, *entries)
        write_json_atomic(out / "comparison.json", comparison)
        return comparison

    return fake_compare


def test_seeded_compare_runs_each_seed_into_its_own_dir(tmp_path, monkeypatch):
    calls = []
    fake_compare = _fake_compare(calls)
    monkeypatch.setattr(fedspine.compare, "run_compare", fake_compare)
    config = load_config("smoke", overrides=["run.seed=7", "run.time_budget_s=20"])
    aggregate = run_seeded_compare(config, ["fedspine", "fedlora"], tmp_path / "out", [3, 1])
    out = tmp_path / "out"
    assert [(s, n) for s, n, _ in calls] == [
        (3, ["fedspine", "fedlora"]),
        (1, ["fedspine", "fedlora"]),
    ]
    assert [o for _, _, o in calls] == [out / "seed-3", out / "seed-1"]
    assert aggregate["seeds"] == [1, 3] and aggregate["time_budget_s"] == 20.0
    fedlora = aggregate["methods"][1]
    assert fedlora["speedup_of_fedspine"]["geomean"] == pytest.approx(2.0)
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["methods"][1]["method"] == "fedlora"
    assert (out / "comparison.md").read_text().startswith("# Method comparison over 2 seeds")
    assert (out / "comparison.png").stat().st_size > 0


def test_cli_refuses_seed_and_seeds_together(monkeypatch, tmp_path):
    from fedspine.cli import main

    argv = ["fedspine", "compare", "--seed", "1", "--seeds", "0,1", "-o", "x"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert not (tmp_path / "x").exists()


def test_cli_seeds_writes_the_summary(monkeypatch, tmp_path, capsys):
    from fedspine.cli import main

    calls = []
    monkeypatch.setattr(fedspine.compare, "run_compare", _fake_compare(calls))
    argv = ["fedspine", "compare", "-p", "smoke", "--seeds", "0,1", "--methods", "fedspine,fedlora"]
    monkeypatch.setattr(sys, "argv", argv + ["-o", "x"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    assert [seed for seed, _, _ in calls] == [0, 1]
    assert "# Method comparison over 2 seeds" in capsys.readouterr().out
    assert json.loads((tmp_path / "x" / "comparison.json").read_text())["seeds"] == [0, 1]


def test_every_kth_device_keeps_the_spread_of_ids():
    from fedspine.evaluation import every_kth_device

    assert every_kth_device(list(range(80)), 16) == [round(i * 79 / 15) for i in range(16)]
    assert every_kth_device([5, 1, 3], 16) == [1, 3, 5]
