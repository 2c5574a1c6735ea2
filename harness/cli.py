"""The `vireid` command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, HarnessError, InputError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_ALL_FAILED = 1


def _overrides(pairs: Sequence[str] | None) -> dict[str, Any]:
    from harness.config import parse_override

    return dict(parse_override(p) for p in pairs or [])


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a config key by dotted path, value parsed as YAML "
                        "(e.g. --set train.epochs=2 --set loss.ica.sigma=4); repeatable")


def cmd_run(args: argparse.Namespace) -> int:
    from harness.config import TrialConfig, load_yaml, resolve_file_paths
    from harness.recipes import apply_recipe
    from harness.results import print_report, write_report
    from harness.runner import run_sweep
    from harness.sweep import SweepSpec, check_sweep_name

    check_sweep_name(args.name, "--name")
    base = load_yaml(args.config) if args.config else {}
    if base is not None and not isinstance(base, dict):
        raise ConfigError(f"{args.config}: a trial config is a YAML mapping of config keys")
    if args.config and base:
        base = resolve_file_paths(base, Path(args.config).parent)  # relative paths: from the file's folder
    source = str(args.config or "defaults")
    base = apply_recipe(args.recipe, base or {}, where="--recipe")
    TrialConfig.from_dict(base, where=source)
    spec = SweepSpec(name=args.name, base=base or {}, grid={}, source=source, keep_models=not args.no_models)
    spec.trials(_overrides(args.overrides))  # validate before anything runs
    folder = run_sweep(spec, backend="local", overrides=_overrides(args.overrides), results_dir=args.results_dir,
                       retry_failed=True, quiet=args.quiet)
    print_report(write_report(folder, plots=False))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.published import published_by_protocol
    from harness.results import TABLE_METRICS, ResultStore, print_report, write_report
    from harness.runner import run_sweep
    from harness.runner.common import sweep_failures
    from harness.sweep import load_spec

    spec = load_spec(args.spec)
    if args.dry_run:
        spec = spec.as_dry_run()
    if args.no_models:
        spec = dataclasses.replace(spec, keep_models=False)
    overrides = _overrides(args.overrides)
    spec.trials(overrides)
    if (args.final or args.final_trial) and spec.search is None:
        raise InputError(f"{args.spec}: --final needs a search spec (a 'search' block) whose best trial it retrains")
    folder = run_sweep(spec, backend=args.backend, overrides=overrides, results_dir=args.results_dir,
                       workers=args.workers, retry_failed=args.retry_failed, quiet=args.quiet, address=args.address,
                       storage=args.storage, gpus=args.gpus, trials_per_gpu=args.trials_per_gpu,
                       gpus_per_trial=args.gpus_per_trial, stale_after=args.stale_after)
    failures = sweep_failures(ResultStore(folder))
    if failures:
        print(f"vireid: every trial of sweep {spec.name!r} failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return EXIT_ALL_FAILED
    table = spec.table
    protocols = table.get("protocols") or ([table["protocol"]] if table.get("protocol") else None)
    published = published_by_protocol(table["published"], protocols) if table.get("published") else None
    print_report(write_report(folder, protocols=protocols, baseline=table.get("baseline"),
                              group_by=table.get("group_by", ["method"]),
                              metrics=table.get("metrics", TABLE_METRICS), published=published))
    if args.final or args.final_trial or spec.final:
        from harness.final import run_final

        folder, report = run_final(spec, results_dir=args.results_dir, trial=args.final_trial, quiet=args.quiet)
        print_report(report)
        from harness.final import CHOSEN_CONFIG

        print(f"the chosen configuration: {folder / CHOSEN_CONFIG} (vireid run --config accepts it)", file=sys.stderr)
    return 0



def cmd_table(args: argparse.Namespace) -> int:
    from harness.published import published_by_protocol
    from harness.results import TABLE_METRICS, print_report, write_report

    protocols = args.protocol or None
    published = None
    rows = {}
    for pair in args.published_row or []:
        row, sep, entry = pair.partition("=")
        if not sep or not row or not entry:
            raise InputError(f"--published-row: expected ROW=PAPER.SETTING, got {pair!r}")
        rows[row] = entry
    if rows and not args.published:
        raise InputError("--published-row needs --published FILE (or --published builtin)")
    if args.published:
        published = published_by_protocol({"file": args.published, "rows": rows}, protocols)
    out = args.out or args.folder[0]
    print_report(write_report(out, protocols=protocols, baseline=args.baseline,
                              group_by=args.group_by or ["method"], metrics=args.metrics or TABLE_METRICS,
                              published=published, plots=not args.no_plots, sources=args.folder))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from methods import list_methods
    from methods.registry import list_composers

    rows = list_methods()
    if args.json:
        print(json.dumps([{"name": m.name, "description": m.description, "switches": m.switches} for m in rows],
                         indent=2))
        return 0
    width = max(len(m.name) for m in rows)
    families: dict[Any, list[Any]] = {}  # one table per builder: the presets of a family share their switches
    for m in rows:
        families.setdefault(m.builder, []).append(m)
    for members in families.values():
        keys = list(dict.fromkeys(k for m in members for k in m.switches))
        cells = [[_switch_cell(m.switches.get(k)) for k in keys] for m in members]
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
        print("  ".join([f"{'method':<{width}}", *(f"{k:<{w}}" for k, w in zip(keys, widths)), "description"]))
        for m, row in zip(members, cells):
            print("  ".join([f"{m.name:<{width}}", *(f"{c:<{w}}" for c, w in zip(row, widths)), m.description]))
        print()
    combos = "; ".join(f"{c.base}+<{c.tokens_help}>" for c in list_composers())
    print(f"Any combination is valid too: {combos} (e.g. agw+cca, agw+mcm+center+cca, caj+wrt, deen-base+dee+cpm).")
    return 0


def _switch_cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "yes" if value else "-"
    return str(value)


def cmd_data_check(args: argparse.Namespace) -> int:
    from harness.data.check import check_dataset

    report = check_dataset(args.dataset, Path(args.root))
    print(report.format())
    return 0 if report.ok else EXIT_BAD_INPUT


def cmd_data_split(args: argparse.Namespace) -> int:
    from harness.data.check import describe_split

    split = describe_split(args.dataset, Path(args.root), mode=args.mode, shots=args.shots, trial=args.trial,
                           direction=args.direction)
    if args.json:
        print(json.dumps(split, indent=1))
    else:
        for part in ("query", "gallery"):
            items = split[part]
            print(f"# {part}: {len(items)} images")
            for item in items:
                print(f"{item['path']}\t{item['id']}\t{item['camera']}")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from harness.data.registry import get_dataset
    from harness.data.synthetic import SynthSpec

    spec = SynthSpec(num_identities=args.identities, images_per_camera=args.images_per_camera,
                     height=args.height, width=args.width, seed=args.seed)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is a file or a folder that is not empty; choose a new folder")
    path = get_dataset(args.layout).write_synthetic(out, spec)
    print(f"wrote a synthetic {args.layout} tree to {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import run_epoch_benchmark, run_step_benchmark

    if args.epoch:
        print(run_epoch_benchmark(method=args.method, backbone=args.backbone, size=args.size, batch=args.batch,
                                  device=args.device, warmup=args.warmup, amp=args.amp,
                                  channels_last=args.channels_last, compile=args.compile,
                                  overrides=_overrides(args.overrides), train_images=args.train_images,
                                  train_identities=args.train_identities, estimate_epochs=args.estimate_epochs,
                                  eval_images=args.eval_images, as_json=args.json))
        return 0
    print(run_step_benchmark(method=args.method, backbone=args.backbone, size=args.size, batch=args.batch,
                             device=args.device, steps=args.steps, warmup=args.warmup, amp=args.amp,
                             channels_last=args.channels_last, compile=args.compile,
                             overrides=_overrides(args.overrides), as_json=args.json))
    return 0


def cmd_bench_report(args: argparse.Namespace) -> int:
    from harness.benchreport import run_bench_report

    report, code = run_bench_report(args.json_file, out=args.out, check=args.check)
    print(report, end="")
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vireid", description="Visible-infrared person re-ID benchmark and ablation "
                                "harness: MCLNet and its ablations on timm backbones.")
    p.add_argument("--numerics", choices=("native", "portable"),
                   help="CPU kernels: native (default; fastest, digits depend on the CPU model) or portable (the "
                        "same digits on any x86-64 CPU with AVX2, about 2x the CPU time); default: $VIREID_NUMERICS "
                        "or native. Goes before the command: vireid --numerics portable sweep ...")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train and evaluate one trial", description="Train one trial to its final epoch "
                         "and evaluate that model on every test protocol of its dataset.")
    run.add_argument("--config", help="YAML file of config keys (nested mapping); defaults otherwise")
    run.add_argument("--recipe", help="named recipe under the --config values (e.g. mclnet-authors: the authors' "
                     "training recipe; see harness/recipes/), or a recipe YAML path")
    _add_set(run)
    run.add_argument("--name", default="run", help="results sub-folder name (default: run)")
    run.add_argument("--results-dir", default="results", help="where sweep folders go (default: results)")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--no-models", action="store_true", help="do not keep the final weights under <folder>/models")
    run.set_defaults(func=cmd_run)

    sw = sub.add_parser("sweep", help="run a sweep spec (grid or search) and write its tables",
                        description="Run every trial of a sweep spec (YAML under benchmarks/), skipping trials "
                        "already in results/<name>/ and resuming unfinished ones, then write tables and plots.")
    sw.add_argument("spec", help="sweep spec YAML, e.g. benchmarks/ablation_synthetic.yaml")
    from harness.runner import backend_names

    sw.add_argument("--backend", choices=backend_names(), help="override the spec's backend")
    _add_set(sw)
    sw.add_argument("--results-dir", default="results", help="where sweep folders go (default: results)")
    sw.add_argument("--workers", type=int, help="local, optuna: worker processes (default: one per GPU)")
    sw.add_argument("--gpus", help="local, optuna: GPUs the workers are pinned to, e.g. 0,1,2,3 (default: every "
                    "visible GPU; 'none': CPU workers)")
    sw.add_argument("--trials-per-gpu", type=int, help="local, optuna: trials sharing one GPU (default 1)")
    sw.add_argument("--storage", help="optuna: study storage URL shared by several nodes, e.g. "
                    "postgresql://user:pw@host/db (default: SQLite in the results folder)")
    sw.add_argument("--stale-after", type=int, help="optuna: seconds without a heartbeat after which a stopped "
                    "worker's trial is retried (default 180)")
    sw.add_argument("--address", help="ray: address of an existing Ray cluster (e.g. auto or HOST:6379)")
    sw.add_argument("--gpus-per-trial", type=float, help="ray: GPUs per trial; a fraction (0.5) lets small trials "
                    "share a GPU (default 1 where there are GPUs)")
    sw.add_argument("--dry-run", action="store_true",
                    help="apply the spec's dry_run overrides (synthetic data in the same layout, tiny model) and "
                         "write to results/<name>-dry-run")
    sw.add_argument("--retry-failed", action="store_true", help="run failed trials again instead of skipping them")
    sw.add_argument("--final", action="store_true",
                    help="search specs: after the search, retrain its best configuration on all training identities "
                         "with the search's seeds (or the spec's final.seeds), evaluate on the test protocols and "
                         "write results/<name>-final/ (table + chosen.yaml for vireid run --config)")
    sw.add_argument("--final-trial", metavar="TRIAL",
                    help="with --final: the trial (key or id, e.g. a Pareto choice) to retrain instead of the best")
    sw.add_argument("--quiet", action="store_true", help="no progress display")
    sw.add_argument("--no-models", action="store_true",
                    help="do not keep the trials' final weights under results/<sweep>/models (spec key keep_models)")
    sw.set_defaults(func=cmd_sweep)

    tb = sub.add_parser("table", help="rebuild tables and plots of a results folder without rerunning",
                        description="Rebuild the tables (Markdown, CSV, LaTeX; per protocol and one paper-style table "
                        "across protocols) and figures (PNG + PDF) from results/<sweep>/, reading its store "
                        "without modifying it.")
    tb.add_argument("folder", nargs="+", help="a sweep results folder, e.g. results/ablation-synthetic; several "
                    "are merged into one table (e.g. each node's folder of one multi-node sweep)")
    tb.add_argument("--out", help="where the tables and figures go (default: the first folder)")
    tb.add_argument("--protocol", nargs="+", help="protocols to tabulate, in this order (default: every recorded one)")
    tb.add_argument("--baseline", help="row (e.g. method name) to compute paired deltas against")
    tb.add_argument("--group-by", nargs="+", help="label columns: record keys or dotted config keys (default: "
                    "method); rows are always distinct configurations, seeds averaged")
    tb.add_argument("--metrics", nargs="+", help="metric columns (default: rank1 rank10 rank20 mAP mINP)")
    tb.add_argument("--published", help="YAML of published results to show beside the measured rows")
    tb.add_argument("--published-row", action="append", metavar="ROW=ENTRY.KEY",
                    help="which published entry a row shows, e.g. mclnet=mclnet.sysu_all; repeatable")
    tb.add_argument("--no-plots", action="store_true", help="tables only")
    tb.set_defaults(func=cmd_table)

    me = sub.add_parser("methods", help="list registered methods and their switches",
                        description="List the method presets and what each switches on.")
    me.add_argument("--json", action="store_true", help="machine-readable output")
    me.set_defaults(func=cmd_methods)

    from harness.config import SyntheticConfig
    from harness.data.registry import SPLIT_OPTIONS, dataset_names, get_dataset

    datasets = dataset_names()
    da = sub.add_parser("data", help="dataset tools: check, split, synth", description="Dataset tools.")
    dsub = da.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    ck = dsub.add_parser("check", help="validate a dataset tree and print its counts",
                         description="Validate a dataset folder; exit 0 when usable, 2 otherwise.")
    ck.add_argument("--dataset", required=True, choices=datasets, help="layout of ROOT")
    ck.add_argument("root", help="dataset root folder")
    ck.set_defaults(func=cmd_data_check)
    sp = dsub.add_parser("split", help="print the exact query/gallery lists of one evaluation trial",
                         description="Print the query and gallery images (path, id, camera) that one evaluation "
                         "trial uses.")
    sp.add_argument("--dataset", required=True, choices=datasets, help="layout of ROOT")
    sp.add_argument("root", help="dataset root folder")
    for option in SPLIT_OPTIONS:  # each dataset states the split options it takes
        takes = [f"{d.title}: {d.split_options[option]}"
                 for d in map(get_dataset, datasets) if option in d.split_options]
        others = "" if len(takes) == len(datasets) else " (not an option of the other datasets)"
        sp.add_argument(f"--{option}", type=int if option in ("shots", "trial") else str,
                        help="; ".join(takes) + others)
    sp.add_argument("--json", action="store_true", help="JSON output")
    sp.set_defaults(func=cmd_data_split)
    sy = dsub.add_parser("synth", help="write a synthetic dataset in a real layout",
                         description="Write a procedurally generated VI-ReID dataset in the layout of a "
                         "registered dataset.")
    sy.add_argument("--layout", required=True, choices=datasets, help="layout to write")
    sy.add_argument("out", help="new output folder")
    synthetic = SyntheticConfig()
    sy.add_argument("--identities", type=int, default=synthetic.num_identities,
                    help="number of identities (default %(default)s)")
    sy.add_argument("--images-per-camera", type=int, default=synthetic.images_per_camera,
                    help="images per identity per camera (default %(default)s)")
    sy.add_argument("--height", type=int, default=synthetic.height, help="image height (default %(default)s)")
    sy.add_argument("--width", type=int, default=synthetic.width, help="image width (default %(default)s)")
    sy.add_argument("--seed", type=int, default=synthetic.seed, help="generator seed (default %(default)s)")
    sy.set_defaults(func=cmd_data_synth)

    be = sub.add_parser("bench", help="profile one training step with a per-phase breakdown",
                        description="Time training steps of a method with synchronised per-phase timers.")
    be.add_argument("--method", default="mclnet", help="method name (default mclnet)")
    be.add_argument("--backbone", default="resnet50", help="timm model name (default resnet50)")
    be.add_argument("--size", default="288x144", help="input HxW (default 288x144)")
    be.add_argument("--batch", type=int, default=64, help="batch size = 2*P*K (default 64)")
    be.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    be.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    be.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    be.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast dtype")
    be.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    be.add_argument("--compile", action="store_true", help="torch.compile the network")
    be.add_argument("--json", action="store_true", help="machine-readable output")
    ep = be.add_argument_group("epoch timing", "--epoch times one whole training epoch (as a trial runs it) "
                               "over a random train set of a dataset's size, plus one evaluation's feature "
                               "extraction, and extrapolates a full training")
    ep.add_argument("--epoch", action="store_true",
                    help="time one epoch (after --warmup steps) instead of --steps single steps")
    ep.add_argument("--train-images", metavar="VIS,IR", default=None,
                    help="visible,infrared training images (default SYSU-MM01: 22258,11909)")
    ep.add_argument("--train-identities", type=int, default=395, help="training identities (default 395)")
    ep.add_argument("--estimate-epochs", type=int, default=None,
                    help="epochs of the extrapolated training (default: the mclnet-authors recipe's 201)")
    ep.add_argument("--eval-images", type=int, default=7643,
                    help="images of one evaluation pass (default 7643: SYSU-MM01's 3803 queries + a 3840-image "
                         "multi-shot gallery)")
    _add_set(be)
    be.set_defaults(func=cmd_bench)

    br = sub.add_parser("bench-report", help="speed-up tables and target checks from a pytest-benchmark JSON file",
                        description="Summarise `pytest benchmarks --benchmark-only --benchmark-json=FILE`: each "
                                    "group with speed-ups over its slowest benchmark, and the harness's speed "
                                    "targets (met / MISSED / not measured) on median times.")
    br.add_argument("json_file", help="pytest-benchmark JSON file")
    br.add_argument("--out", help="also write the Markdown report to this file (atomically)")
    br.add_argument("--check", action="store_true", help="exit 1 when a measured target is missed")
    br.set_defaults(func=cmd_bench_report)

    from harness.cli_models import add_model_commands

    add_model_commands(sub, _add_set, _overrides)
    return p


def _apply_numerics(argv: Sequence[str] | None) -> None:
    """`--numerics` (or VIREID_NUMERICS) applied before anything imports torch (harness.numerics)."""
    from harness.numerics import apply_numerics, requested_mode

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--numerics")
    known, _ = pre.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    apply_numerics(known.numerics or requested_mode())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        _apply_numerics(argv)
        args = build_parser().parse_args(argv)
        return args.func(args)
    except InputError as exc:
        print(f"vireid: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except HarnessError as exc:  # a run-time failure of a command that runs no sweep (e.g. bench)
        print(f"vireid: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # the reader closed our output early (`vireid methods --json | head`): stop without a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("vireid: error: output closed before it was all written (broken pipe)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # the environment refused a read or write no check foresaw
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"vireid: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except sqlite3.DatabaseError as exc:
        print(f"vireid: error: a results store is not a readable SQLite database ({exc}); move it away and rerun",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("vireid: interrupted; finished trials are stored, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
