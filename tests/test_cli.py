"""The command line: bad input gets one readable error line (exit 2), and nothing is left behind.

Every error case here must fail before the simulation starts, so the file runs in seconds: the
cases call the real entry point `fedspine.cli.main` in process (torch and transformers are
imported once), and two run it as a separate process to see exactly what a user's terminal gets.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import tomllib
import torch
import typer
from typer.testing import CliRunner

import fedspine.resources  # noqa: F401  (import torch/transformers once, outside the timings)
from fedspine import cli
from fedspine.errors import ConfigError
from fedspine.logs import QUIET_LOGGERS
from fedspine.report.record import read_rounds
from fedspine.run_dir import RunDirectory, abandon_run

torch.set_num_threads(1)

ERROR_BUDGET_S = 30.0  # generous for a loaded 2-core box; a failure after Ray starts takes longer


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run in an empty cwd (a default `runs/` dir would land there); restore os.environ, the
    warning filters and the log levels that the CLI changes for its own process."""
    saved_env = dict(os.environ)
    saved_levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        yield
    os.environ.clear()
    os.environ.update(saved_env)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def run_main(args: list[str], capsys, monkeypatch) -> tuple[int, str, str, float]:
    """Call the console-script entry point in process; return exit code, stdout, stderr, secs."""
    monkeypatch.setattr(sys, "argv", ["fedspine", *args])
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err, time.perf_counter() - start


def assert_one_error_line(stderr: str, *hints: str) -> None:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for hint in hints:
        assert hint in lines[0], f"{hint!r} missing from: {lines[0]}"


def leftovers(root: Path, inputs: set[str]) -> list[str]:
    """Anything under `root` that the test did not put there (run dirs, .partial dirs)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name not in inputs)


def write_inputs(root: Path) -> dict[str, Path]:
    """One small file per kind of malformed data."""
    files = {
        "nolabel.csv": "text,category\nhello there,a\nbuy now,b\nsee you,a\n",
        "broken.jsonl": '{"text": "hi", "label": "ham"}\n{"text": "buy", "label"\n',
        "oneclass.csv": "text,label\n" + "".join(f"message {i},ham\n" for i in range(20)),
        "notoml.toml": "this is = not [toml\n",
        "unknownkey.toml": "[run]\nrounds = 2\nspeed = 3\n",
    }
    paths = {}
    for name, text in files.items():
        paths[name] = root / name
        paths[name].write_text(text, encoding="utf-8")
    paths["latin1.csv"] = root / "latin1.csv"
    paths["latin1.csv"].write_bytes("text,label\ncaf\xe9 au lait,a\nthe,b\n".encode("latin-1"))
    return paths


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    """A real (tiny, random) GPT-2 checkpoint: a loadable model of an unsupported family."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2")
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=128,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


ERROR_CASES = {
    # name: (extra CLI args, with {file} for the input path; hints the message must hold)
    "missing dataset": (["--set", "data.dataset=/nope.csv"], ["not found", "/nope.csv"]),
    "no label column": (
        ["--set", "data.dataset={nolabel.csv}"],
        ["no label column 'label'", "--set data.label_column="],
    ),
    "broken jsonl line": (["--set", "data.dataset={broken.jsonl}"], ["line 2", "JSON object"]),
    "one class": (
        ["--set", "data.dataset={oneclass.csv}"],
        ["only one class", "at least two"],
    ),
    "undecodable bytes": (["--set", "data.dataset={latin1.csv}"], ["UTF-8", "iconv"]),
    "sparsity out of range": (
        ["--set", "pruning.target_sparsity=1.5"],
        ["pruning.target_sparsity must be in [0, 1)"],
    ),
    "zero rounds": (["--set", "run.rounds=0"], ["run.rounds must be >= 1"]),
    "not a number": (["--set", "run.rounds=many"], ["run.rounds", "--set run.rounds=4"]),
    "unknown key": (["--set", "run.speed=3"], ["unknown key run.speed", "keys of [run] are"]),
    "unknown key in file": (
        ["--config", "{unknownkey.toml}"],
        ["unknown key run.speed", "keys of [run] are"],
    ),
    "unknown section": (["--set", "wat.x=1"], ["unknown config section [wat]", "run, data"]),
    "malformed --set": (["--set", "rounds"], ["section.key=value"]),
    "unknown preset": (["--preset", "huge"], ["unknown preset 'huge'", "smoke, default"]),
    "unknown method": (["--method", "fedavg"], ["'fedavg' is not one of", "fedlora"]),
    "config not toml": (["--config", "{notoml.toml}"], ["is not valid TOML", "line 1"]),
    "config missing": (["--config", "/nope.toml"], ["/nope.toml not found", "TOML file"]),
    "unsupported architecture": (
        ["--set", "model.source={gpt2}"],
        ["'gpt2' is not supported", "llama"],
    ),
    "missing model dir": (
        ["--set", "model.source=/nope/model"],
        ["/nope/model does not exist", "model.source=minilm"],
    ),
    "model dir without config.json": (
        ["--set", "model.source={empty_dir}"],
        ["no config.json", "save_pretrained"],
    ),
}


def fill(arg: str, paths: dict[str, str]) -> str:
    for name, path in paths.items():
        arg = arg.replace("{" + name + "}", path)
    return arg


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_is_one_error_line_and_leaves_nothing(
    case, tmp_path, gpt2_dir, capsys, monkeypatch
):
    inputs = write_inputs(tmp_path)
    (tmp_path / "empty_model").mkdir()
    paths = {name: str(p) for name, p in inputs.items()}
    paths |= {"gpt2": str(gpt2_dir), "empty_dir": str(tmp_path / "empty_model")}
    extra, hints = ERROR_CASES[case]
    args = [fill(arg, paths) for arg in extra]
    out = tmp_path / "run"
    code, _, stderr, seconds = run_main(
        ["run", "--preset", "smoke", *args, "--out", str(out)], capsys, monkeypatch
    )
    assert code == 2
    assert_one_error_line(stderr, *hints)
    assert leftovers(tmp_path, set(inputs) | {"empty_model"}) == []
    assert seconds < ERROR_BUDGET_S, f"{case} took {seconds:.0f}s: it should fail before Ray"


@pytest.mark.parametrize("existing", ["non-empty dir", "file"])
def test_existing_out_is_refused_and_kept_intact(existing, tmp_path, capsys, monkeypatch):
    out = tmp_path / "previous-run"
    if existing == "file":
        out.write_text("keep me", encoding="utf-8")
    else:
        out.mkdir()
        (out / "summary.json").write_text("keep me", encoding="utf-8")
    code, _, stderr, seconds = run_main(
        ["run", "--preset", "smoke", "--out", str(out)], capsys, monkeypatch
    )
    assert code == 2
    assert_one_error_line(stderr, str(out), "--out")
    kept = out if existing == "file" else out / "summary.json"
    assert kept.read_text(encoding="utf-8") == "keep me"
    assert leftovers(tmp_path, {out.name, "summary.json"}) == []
    assert seconds < ERROR_BUDGET_S


def test_error_in_a_fresh_process_is_one_line_on_stderr(tmp_path):
    """What a terminal gets from the installed command: stderr is a pipe (80 columns), not a tty;
    a long message must still be one line and Rich must not eat `[run]` as markup."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fedspine.cli", "run", "--preset", "smoke"]
    result = subprocess.run(
        [*command, "--set", "run.speed=3", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
    )
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "keys of [run] are: method, seed, rounds")
    assert result.stdout == ""
    assert not out.exists() and not out.with_name("run.partial").exists()


def test_data_error_from_console_script_has_no_library_noise(tmp_path):
    """The data path imports torch and transformers: no warning or log line may join the error."""
    script = Path(sys.executable).with_name("fedspine")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "fedspine.cli"]
    csv = write_inputs(tmp_path)["nolabel.csv"]
    out = tmp_path / "run"
    result = subprocess.run(
        [*command, "run", "-p", "smoke", "-s", f"data.dataset={csv}", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "no label column 'label'", "columns present")
    assert not out.exists() and not out.with_name("run.partial").exists()
    assert not (tmp_path / "runs").exists()


# ---- help and show-config ------------------------------------------------------------------

BOX = re.compile(r"[│╭╮╰╯─┃━]")


def flat(text: str) -> str:
    """Rendered help without box drawing and line wrapping, for substring checks."""
    return " ".join(BOX.sub(" ", text).split())


def invoke(args: list[str]) -> str:
    result = CliRunner().invoke(cli.app, args, prog_name="fedspine", env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_top_level_help_lists_every_command_with_a_description():
    shown = flat(invoke(["--help"]))
    group = typer.main.get_command(cli.app)
    assert len(group.commands) >= 4
    for name, command in group.commands.items():
        summary = command.get_short_help_str(limit=200)
        assert summary, f"command {name} has no description"
        assert f"{name} {flat(summary)[:40]}" in shown


@pytest.mark.parametrize("name", ["run", "show-config", "export", "bench-inference", "compare"])
def test_command_help_explains_every_option(name):
    group = typer.main.get_command(cli.app)
    if name not in group.commands:
        pytest.skip(f"no {name} command in this build")
    shown = flat(invoke([name, "--help"]))
    for param in group.commands[name].params:
        explanation = getattr(param, "help", None)
        assert explanation, f"{name}: {param.name} has no help text"
        for opt in param.opts if param.param_type_name == "option" else []:
            assert opt in shown, f"{name} --help does not list {opt}"
        # Markup escapes (\[) render as the bracket and Markdown code spans without their
        # backticks; the text must otherwise survive rendering whole (e.g. <placeholders>).
        rendered = explanation.replace("\\[", "[").replace("`", "")
        assert flat(rendered) in shown, f"{name}: {param.name} help mangled"


def test_command_descriptions_reflow_to_the_terminal_width():
    """Docstrings are wrapped at 100 columns in the source; help reflows them as paragraphs."""
    shown = invoke(["compare", "--help"])
    assert "rewritten after every method. With a fixed number of rounds" in shown


def test_show_config_round_trips_through_a_config_file(tmp_path):
    smoke = invoke(["show-config", "--preset", "smoke", "--set", "data.iid=true"])
    parsed = tomllib.loads(smoke)
    assert parsed["fleet"]["num_devices"] == 8 and parsed["data"]["iid"] is True
    assert smoke != invoke(["show-config", "--preset", "default"])
    config_file = tmp_path / "smoke.toml"
    config_file.write_text(smoke, encoding="utf-8")
    assert invoke(["show-config", "--config", str(config_file)]) == smoke
    assert invoke(["show-config", "--preset", "paper", "--config", str(config_file)]) == smoke


def test_failed_run_keeps_its_partial_dir_only_when_a_round_finished(tmp_path):
    """A run that dies before its first round leaves nothing; a later failure keeps the rounds."""
    empty = RunDirectory(tmp_path / "early")
    assert abandon_run(empty) is None
    assert list(tmp_path.iterdir()) == []
    midway = RunDirectory(tmp_path / "midway")
    midway.append_round({"round": 1, "accuracy": 0.8})
    kept = abandon_run(midway)
    assert kept == tmp_path / "midway.partial"
    assert read_rounds(kept) == [{"round": 1, "accuracy": 0.8}]
    assert not (tmp_path / "midway").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "fedspine"),
        (["--set", "run.method=fedlora"], "fedlora"),
        (["--method", "hetlora"], "hetlora"),
        (["--set", "run.method=fedlora", "--method", "flexlora"], "flexlora"),
    ],
)
def test_run_method_comes_from_set_unless_method_is_given(args, expected, capsys, monkeypatch):
    """`--set run.method=X` (or a config file's) must not be overridden by --method's default."""
    import fedspine.flower.simulation

    seen = {}

    def fake_simulate(cfg, out, progress, resume=False):
        seen["method"] = cfg.run.method
        raise ConfigError("stop here")

    monkeypatch.setattr(fedspine.flower.simulation, "simulate", fake_simulate)
    code, _, err, _ = run_main(["run", "--preset", "smoke", *args], capsys, monkeypatch)
    assert code != 0 and "stop here" in err
    assert seen["method"] == expected


def _interrupted_run(root: Path, checkpoint: bytes | None = None) -> Path:
    """A `<out>.partial/` as a killed smoke run leaves it (config, a round, maybe a checkpoint)."""
    from fedspine.config import config_to_toml, load_config

    partial = root / "cut.partial"
    partial.mkdir()
    (partial / "config.toml").write_text(config_to_toml(load_config("smoke")), encoding="utf-8")
    (partial / "rounds.jsonl").write_text('{"round": 1}\n', encoding="utf-8")
    if checkpoint is not None:
        (partial / "checkpoint.pt").write_bytes(checkpoint)
    return partial


def _finished_run(root: Path) -> Path:
    done = root / "done"
    done.mkdir()
    (done / "summary.json").write_text("{}", encoding="utf-8")
    (done / "config.toml").write_text("this is = not [toml\n", encoding="utf-8")
    return done


OTHER_ERROR_CASES = {
    # name: (setup(root) -> {placeholder: path}, args, hints)
    "resume a missing run": (lambda r: {}, ["run", "--resume", "{root}/nope"], ["no interrupted"]),
    "resume a finished run": (
        lambda r: {"done": _finished_run(r)},
        ["run", "--resume", "{done}"],
        ["has finished", "nothing to resume"],
    ),
    "resume with other settings": (
        lambda r: {"cut": _interrupted_run(r)},
        ["run", "--resume", "{cut}", "--set", "run.rounds=9"],
        ["run.rounds: 4 -> 9", "drop them"],
    ),
    "resume a corrupted checkpoint": (
        lambda r: {"cut": _interrupted_run(r, b"\x00garbage")},
        ["run", "--resume", "{cut}"],
        ["unreadable", "start it again"],
    ),
    "resume with --out": (
        lambda r: {"cut": _interrupted_run(r)},
        ["run", "--resume", "{cut}", "--out", "{root}/x"],
        ["drop --out, --preset and --config"],
    ),
    "fault probability out of range": (
        lambda r: {},
        ["run", "--preset", "smoke", "--set", "fleet.dropout_prob=2", "--out", "{root}/run"],
        ["fleet.dropout_prob must be in [0, 1]"],
    ),
    "negative deadline": (
        lambda r: {},
        ["run", "--preset", "smoke", "--set", "run.round_deadline_s=-1", "--out", "{root}/run"],
        ["run.round_deadline_s"],
    ),
    "export of a missing run": (
        lambda r: {},
        ["export", "{root}/nope", "--device", "0", "--out", "{root}/model"],
        ["no config.toml"],
    ),
    "export of a corrupted run": (
        lambda r: {"done": _finished_run(r)},
        ["export", "{done}", "--device", "0", "--out", "{root}/model"],
        ["not valid TOML"],
    ),
    "compare of an unknown method": (
        lambda r: {},
        ["compare", "--preset", "smoke", "--methods", "nope", "--out", "{root}/cmp"],
        ["unknown method(s) 'nope'"],
    ),
    "compare with a mistyped setting": (
        lambda r: {},
        ["compare", "--preset", "smoke", "--set", "run.rounds=x", "--out", "{root}/cmp"],
        ["not a valid int"],
    ),
    "show-config of an unknown preset": (
        lambda r: {},
        ["show-config", "--preset", "huge"],
        ["unknown preset 'huge'"],
    ),
    "bench-inference of an absurd sparsity": (
        lambda r: {},
        ["bench-inference", "--sparsity", "2"],
        ["sparsities must lie in [0, 1)"],
    ),
    "generate from a missing model": (
        lambda r: {},
        ["generate", "{root}/nope", "hello"],
        ["not a model directory"],
    ),
}


@pytest.mark.parametrize("case", list(OTHER_ERROR_CASES))
def test_every_entry_point_answers_bad_input_with_one_line(case, tmp_path, capsys, monkeypatch):
    setup, args, hints = OTHER_ERROR_CASES[case]
    paths = {"root": str(tmp_path)} | {k: str(v) for k, v in setup(tmp_path).items()}
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    code, _, stderr, seconds = run_main([fill(a, paths) for a in args], capsys, monkeypatch)
    assert code == 2
    assert_one_error_line(stderr, *hints)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing of the interrupted run touched
    assert seconds < ERROR_BUDGET_S
