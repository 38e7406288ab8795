"""The `fedspine` command line: run, compare, export, bench-inference."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedspine.errors import FedspineError
from fedspine.methods.registry import method_names

app = typer.Typer(
    add_completion=False,
    rich_markup_mode="markdown",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Federated LoRA fine-tuning with on-device structured pruning (FedSpine). "
    "Every command runs offline on the bundled model and data by default.",
)
console = Console(stderr=True)

MethodOpt = Annotated[
    str | None,
    typer.Option(
        "--method",
        "-m",
        help=" | ".join(method_names())
        + " (default: run.method from --config or --set, else fedspine)",
        show_default=False,
    ),
]
PresetOpt = Annotated[
    str,
    typer.Option(
        "--preset",
        "-p",
        help="smoke (CI-sized, <1 min), default (80 devices, the main job), paper (larger, "
        "longer), llm-smoke (SmolLM2 instruction tuning, CI-sized), llm (8 devices, 30% sparsity)",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML file with run, data, model, train, fleet, pruning, bandit and eval "
        "tables; `fedspine show-config` prints a complete one",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override one setting, e.g. --set run.rounds=10 (repeatable)"),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", "-o", help="run directory (default `runs/<time>-<method>/`); must not exist"
    ),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="seed for everything (run.seed)")]


def _config(preset: str, config_file: Path | None, sets: list[str] | None, extra: list[str]):
    from fedspine.config import load_config

    return load_config(preset, config_file, list(sets or []) + extra)


@app.command()
def run(
    method: MethodOpt = None,
    preset: PresetOpt = "default",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    seed: SeedOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="continue the interrupted run in this directory (its --out, or the "
            ".partial directory it left) from its last finished round, with its own config; "
            "the result equals the uninterrupted run",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run one federated fine-tuning job on the simulated device fleet.

    Writes config.toml, rounds.jsonl, summary.json, accuracy_vs_time.png and
    device_configs.png into the run directory (atomically: it appears when complete).
    A checkpoint after every round lets an interrupted run (Ctrl-C, a kill, a crash)
    continue with --resume.
    """
    from fedspine.flower.simulation import simulate
    from fedspine.report.progress import RichProgress

    extra = ([f"run.method={method}"] if method is not None else []) + (
        [f"run.seed={seed}"] if seed is not None else []
    )
    if resume is not None:
        out, cfg = _resume_target(resume, out, method, preset, config, set_, seed)
    else:
        cfg = _config(preset, config, set_, extra)
    progress = RichProgress(cfg.run.method, console)
    try:
        run_dir = simulate(cfg, out, progress, resume=resume is not None)
    finally:
        progress.close()
    summary = json.loads((run_dir / "summary.json").read_text())
    _print_summary(summary, run_dir)


def _resume_target(resume: Path, out, method, preset, config, sets, seed):
    """(out, config) of the run to resume: its own config.toml; --set/--method/--seed given
    beside --resume must agree with it (they are checked, never applied)."""
    from fedspine.config import config_to_dict
    from fedspine.errors import ConfigError
    from fedspine.run_dir import partial_path, resumable_run
    from fedspine.server.checkpoint import config_differences

    if out is not None or config is not None or preset != "default":
        raise ConfigError(
            "--resume uses the run's own directory and config.toml; drop --out, "
            "--preset and --config"
        )
    target, saved = resumable_run(resume)
    given = [f"run.method={method}"] if method is not None else []
    given += [f"run.seed={seed}"] if seed is not None else []
    if sets or given:
        saved_file = partial_path(target) / "config.toml"
        asked = _config("default", saved_file, sets, given)
        diffs = config_differences(config_to_dict(saved), config_to_dict(asked))
        if diffs:
            raise ConfigError(
                f"the settings differ from the interrupted run's ({'; '.join(diffs[:3])}); "
                "drop them to resume with the run's own config.toml"
            )
    return target, saved


def _print_summary(summary: dict, run_dir: Path) -> None:
    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    ttt = summary["time_to_target_s"]
    if summary.get("task") == "generate":  # the accuracy fields hold the answer score
        headline = (
            f"final score {pct(summary['final_score'])} (untuned base "
            f"{pct(summary['base_score'])}, global {pct(summary['global_accuracy'])})"
        )
    else:
        headline = (
            f"final accuracy {pct(summary['final_accuracy'])} "
            f"(global {pct(summary['global_accuracy'])})"
        )
    console.print(
        f"[bold green]done[/] {summary['method']}: {headline}, mean sparsity "
        f"{pct(summary['mean_sparsity'])}, {summary.get('clock', 'simulated')} "
        f"{summary['sim_time_s']:.0f}s, "
        f"time to {pct(summary['target_accuracy'])}: "
        f"{'not reached' if ttt is None else f'{ttt:.0f}s'}, wall {summary['wall_time_s']:.0f}s"
    )
    console.print(f"run directory: {run_dir}")


@app.command()
def compare(
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            help="comma-separated methods to run "
            f"(default: all {len(method_names())}, fedspine first)",
        ),
    ] = None,
    preset: PresetOpt = "default",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="output directory (default `runs/<time>-compare/`); each method runs into "
            "`OUT/<method>/`, and a rerun on the same OUT reuses finished methods",
        ),
    ] = None,
    seed: SeedOpt = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            help="comma-separated seeds, e.g. 0,1,2: the whole comparison runs once per seed "
            "into `OUT/seed-<s>/`, and `OUT/comparison.*` gives per-method means, spreads, "
            "geometric-mean speedups and fedspine's paired accuracy gain (instead of --seed)",
        ),
    ] = None,
    target_share: Annotated[
        float,
        typer.Option(
            help="time-to-target bar: this share of the best final accuracy (re-scored on "
            "the whole test set once every method has run)"
        ),
    ] = 0.95,
    time_budget: Annotated[
        float | None,
        typer.Option(
            "--time-budget",
            help="simulated seconds every method trains to (at least run.rounds rounds, then on "
            "until the clock reaches it), the paper's time-to-accuracy setting; same as "
            "--set run.time_budget_s=S; 0 = fixed rounds (default)",
        ),
    ] = None,
) -> None:
    """Run several methods with the identical config and seeds, then compare them.

    Writes comparison.json, .md and .png into OUT, rewritten after every method. With a fixed
    number of rounds a method with cheaper rounds stops earlier in simulated time; --time-budget
    gives every method the same simulated time instead. One seed rarely separates methods on
    non-IID data; --seeds 0,1,2 repeats the comparison per seed and summarises them.
    """
    from rich.markup import escape

    from fedspine.compare import parse_methods, parse_seeds, run_compare, run_seeded_compare
    from fedspine.errors import ConfigError
    from fedspine.report.comparison import format_markdown
    from fedspine.report.progress import RichProgress
    from fedspine.report.seeds import format_seeds_markdown

    names = parse_methods(methods)
    seed_list = parse_seeds(seeds)
    if seed_list and seed is not None:
        raise ConfigError("give either --seed N or --seeds a,b,c, not both")
    extra = [f"run.seed={seed}"] if seed is not None else []
    extra += [f"run.time_budget_s={time_budget}"] if time_budget is not None else []
    cfg = _config(preset, config, set_, extra)
    out_dir = out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-compare"
    feedback = {
        "make_progress": lambda method: RichProgress(method, console),
        "say": lambda text: console.print(f"[bold]{escape(text)}[/]"),
    }
    if seed_list:
        aggregate = run_seeded_compare(
            cfg, names, out_dir, seed_list, target_share=target_share, **feedback
        )
        typer.echo(format_seeds_markdown(aggregate))
        console.print(f"comparison over seeds {seeds} written to {out_dir}")
        return
    result = run_compare(cfg, names, out_dir, target_share, **feedback)
    typer.echo(format_markdown(result))
    console.print(f"comparison written to {out_dir}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    device: Annotated[int, typer.Option("--device", "-d", help="device id (see summary.json)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the model directory")],
) -> None:
    """Write one device's final model (pruned, LoRA merged) as a Hugging Face model directory.

    Uniform decoders and encoders whose heads were kept load with stock `from_pretrained`;
    BERT/RoBERTa with pruned heads or per-layer widths with `from_pretrained(dir,
    trust_remote_code=True)` (the export ships its modeling file); every export loads with
    `fedspine.load_pruned(dir)`.
    """
    from fedspine.export_device import export_device

    path = export_device(run_dir, device, out)
    console.print(f"exported device {device} to {path}")


@app.command()
def generate(
    model_dir: Annotated[Path, typer.Argument(help="an exported model directory")],
    prompt: Annotated[str, typer.Argument(help="the instruction to answer")],
    max_new_tokens: Annotated[int, typer.Option(help="answer length cap in tokens")] = 64,
) -> None:
    """Answer PROMPT with an exported causal LM (a run with `data.task=generate`).

    Greedy decoding through the tokenizer's chat template; the answer goes to stdout.
    """
    from fedspine.generate_text import generate_text

    typer.echo(generate_text(model_dir, prompt, max_new_tokens))


def _per_node(text: str | None, nodes: int, option: str) -> list[float]:
    """`--slowdown 1,4` style values: one for every node, or one per node."""
    from fedspine.errors import ConfigError

    if not text:
        return []
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option} {text!r} must be numbers separated by commas") from None
    if len(values) == 1:
        return values * nodes
    if len(values) != nodes:
        raise ConfigError(
            f"{option} gives {len(values)} values for {nodes} nodes; give 1 or {nodes}"
        )
    return values


@app.command("deploy-local")
def deploy_local(
    nodes: Annotated[int, typer.Option("--nodes", "-n", help="SuperNodes (devices) to start")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory; must not exist")],
    method: MethodOpt = None,
    preset: PresetOpt = "smoke",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    slowdown: Annotated[
        str | None,
        typer.Option(
            help="per-node slowdown >= 1, e.g. 1,1,4,4: a node sleeps (s-1) x its measured "
            "compute, so it really is s times slower (one value: every node)"
        ),
    ] = None,
    memory_budget_mb: Annotated[
        str | None,
        typer.Option(
            "--memory-budget-mb",
            help="per-node memory budget in MB (one value: every node; default: what is free)",
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="torch threads per SuperNode")] = 1,
    kill_node: Annotated[
        int | None, typer.Option(help="fault check: stop this node (0-based) mid-run")
    ] = None,
    kill_after_round: Annotated[int, typer.Option(help="... once this round is done")] = 1,
    restart_after_round: Annotated[
        int, typer.Option(help="... and start it again once this round is done (0 = never)")
    ] = 0,
) -> None:
    """Deploy N devices on this machine: TLS + SuperNode auth, own data, measured clock.

    Writes certificates, node keys, each node's own data file and node config into
    `OUT.deploy/`, starts a SuperLink and N SuperNodes, runs the job through `flwr run`, and
    stops every process it started (also on failure and Ctrl-C). OUT holds the run record.
    """
    from fedspine.deploy.local import KillPlan, LocalDeployment, NodeOptions

    extra = [f"run.method={method}"] if method is not None else []
    cfg = _config(preset, config, set_, extra)
    slow = _per_node(slowdown, nodes, "--slowdown") or [1.0] * nodes
    memory = _per_node(memory_budget_mb, nodes, "--memory-budget-mb") or [0.0] * nodes
    options = [NodeOptions(s, m) for s, m in zip(slow, memory, strict=True)]
    kill = None
    if kill_node is not None:
        kill = KillPlan(kill_node, kill_after_round, restart_after_round)
    deployment = LocalDeployment(
        cfg, out, options, threads, lambda t: console.print(escape(t)), kill
    )
    started = time.perf_counter()
    run_dir = deployment.run()
    summary = json.loads((run_dir / "summary.json").read_text())
    _print_summary(summary, run_dir)
    console.print(f"deploy-local wall time {time.perf_counter() - started:.0f}s")


@app.command("make-certs")
def make_certs(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the files")],
    host: Annotated[
        list[str],
        typer.Option(
            "--host",
            help="an IP or DNS name SuperNodes and the flwr CLI dial the SuperLink by "
            "(repeatable; the first is the certificate's name)",
        ),
    ],
    nodes: Annotated[int, typer.Option("--nodes", "-n", help="node key pairs to make")] = 1,
) -> None:
    """Write a test CA, the SuperLink's TLS certificate and one key pair per SuperNode.

    ca.crt goes to every SuperNode and the flwr CLI; server.pem and server.key stay on the
    SuperLink; node-K (private) goes to device K only, node-K.pub to `flwr supernode
    register`. For a lab fleet: keep the folder private, and use your own CA in production.
    """
    from fedspine.deploy.certs import make_test_pki
    from fedspine.errors import ConfigError

    if nodes < 1:
        raise ConfigError("--nodes must be >= 1")
    pki = make_test_pki(out, [f"node-{i}" for i in range(nodes)], list(host))
    console.print(f"CA {pki.ca_cert}, server {pki.server_cert} + {pki.server_key}")
    for keys in pki.nodes:
        console.print(f"node key {keys.private_key} (public {keys.public_key})")


@app.command("show-config")
def show_config(
    preset: PresetOpt = "default", config: ConfigOpt = None, set_: SetOpt = None
) -> None:
    """Print the fully resolved config as TOML (a starting point for --config files)."""
    from fedspine.config import config_to_toml

    typer.echo(config_to_toml(_config(preset, config, set_, [])))


@app.command("bench-inference")
def bench_inference(
    model: Annotated[
        str | None, typer.Option(help="model source (default: bundled MiniLM)")
    ] = None,
    sparsity: Annotated[
        list[float] | None,
        typer.Option(help="sparsity to measure (repeatable); 0.0 is always included"),
    ] = None,
    batch: Annotated[int, typer.Option(help="batch size")] = 8,
    seq_len: Annotated[int, typer.Option(help="sequence length")] = 128,
    repeats: Annotated[int, typer.Option(help="timed repeats (median reported)")] = 20,
    threads: Annotated[
        int, typer.Option(help="torch threads (1 gives stable ratios on a busy machine)")
    ] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the table as JSON")] = None,
    new_tokens: Annotated[
        int,
        typer.Option(
            help="0: one forward pass of a classifier; N > 0: a causal LM (e.g. --model "
            "smollm2-135m) generates N tokens per call, reported as ms per token too"
        ),
    ] = 0,
) -> None:
    """Latency, parameter count and bytes of pruned copies, side by side in one process."""
    from fedspine.bench_inference import format_bench_table, run_bench_inference
    from fedspine.report.record import write_json_atomic

    result = run_bench_inference(
        model,
        sorted(set([0.0] + list(sparsity or [0.3, 0.5]))),
        batch,
        seq_len,
        repeats,
        3,
        threads,
        new_tokens,
    )
    typer.echo(format_bench_table(result))
    if json_out:
        write_json_atomic(json_out, result)


def main() -> None:
    """Entry point: user errors print one line and exit 2, never a traceback."""
    from fedspine.logs import quiet_logs, use_offline_env

    use_offline_env()  # before Flower, Ray or transformers are imported
    quiet_logs()
    try:
        app()
    except FedspineError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted[/]: a run keeps its finished rounds in <out>.partial/; "
            "a compare keeps finished methods in <out>/<method>/ (rerun it with the same "
            "--out to resume)"
        )
        sys.exit(130)


if __name__ == "__main__":
    main()
