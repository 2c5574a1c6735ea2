"""`vireid eval`, `extract`, `show`, `export-backbone` and `import-checkpoint`: the commands of saved models."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL_HELP = "a saved model: results/<sweep>/models/<trial key>.safetensors (or its .json card)"


def _with_rerank(overrides: dict[str, Any], rerank: bool) -> dict[str, Any]:
    return {**overrides, "evaluation.rerank.enabled": True} if rerank else overrides


def imported_published(model: str | Path, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Published numbers of an imported checkpoint's method (its card's entries) for the protocols evaluated."""
    from harness.published import published_by_protocol
    from harness.saved_models import read_model

    saved = read_model(model)
    entries = (saved.card.get("imported") or {}).get("published") or {}
    evaluated = {r.get("protocol") for r in records}
    rows = {protocol: entry for protocol, entry in entries.items() if protocol in evaluated}
    if not rows:
        return None
    return published_by_protocol({"rows": {saved.config.method: rows}}, sorted(rows))


def cmd_eval(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from harness.model_tools import evaluate_saved_model
    from harness.results import print_report, write_report
    from harness.sweep import check_sweep_name

    folder = Path(args.results_dir) / check_sweep_name(args.name, "--name")
    _, records = evaluate_saved_model(args.model, overrides=_with_rerank(overrides, args.rerank), folder=folder,
                                      quiet=args.quiet)
    protocols = [args.protocol] if args.protocol else None
    published = imported_published(args.model, [r for r in records if not protocols or r["protocol"] in protocols])
    report = write_report(folder, protocols=protocols, published=published,
                          group_by=["method", "dataset", "evaluation.rerank.enabled"], plots=False)
    print_report(report)
    if published and "(published)" in report.markdown:  # not beside rows of synthetic data
        from harness.results.paper import PUBLISHED_SOURCE

        print(f"published numbers beside it in {folder / 'table.md'} (.tex, .csv): " + "; ".join(
            f"{protocol} " + ", ".join(f"{m} {v:.2f}" for m, v in numbers.items() if m != PUBLISHED_SOURCE)
            for protocol, rows in published.items() for numbers in rows.values()))
    return 0


def cmd_extract(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    import numpy as np

    from harness.model_tools import extract_folder

    out = extract_folder(args.model, args.folder, modality=args.modality, out=args.out, overrides=overrides,
                         quiet=args.quiet)
    with np.load(out, allow_pickle=False) as data:
        count, dim = data["features"].shape
    print(f"wrote {out}: {count} {args.modality} image(s) under {args.folder}, {dim}-dimensional features "
          "(np.load: features, paths)")
    return 0


def cmd_show(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from harness.figures.qualitative import show_saved_model

    files = show_saved_model(args.model, overrides=_with_rerank(overrides, args.rerank), out=args.out,
                             protocol=args.protocol, queries=args.queries, top_k=args.top_k,
                             trial=args.trial, tsne_identities=args.tsne_identities, quiet=args.quiet)
    print("written: " + ", ".join(str(f) for f in files))
    return 0


def cmd_export_backbone(args: argparse.Namespace) -> int:
    from harness.model_tools import export_backbone

    out = export_backbone(args.model, args.out, stem=args.stem)
    print(f"wrote {out} and {out.with_suffix('.json')}; start a run from it with --set model.pretrained_file={out}")
    return 0


def cmd_import_checkpoint(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from harness.checkpoint_import import import_checkpoint

    weights, imported = import_checkpoint(args.source, args.file, args.out, dataset=args.dataset, overrides=overrides)
    record = imported["checkpoint_record"]
    saved_with = ", ".join(f"{k} {v:g}" for k, v in record.items()) or "no metrics"
    print(f"wrote {weights} and {weights.with_suffix('.json')}: {imported['source']}, sha256 {imported['sha256']}, "
          f"{imported['tensors']} tensors ({imported['dropped']} unused by the source's forward dropped); "
          f"saved with: {saved_with}")
    root = "" if "data.root" in overrides else f" --set data.root=<{args.dataset} root>"
    print(f"evaluate it with: vireid eval {weights}{root}")
    return 0


def add_model_commands(sub: Any, add_set: Callable[[argparse.ArgumentParser], None],
                       overrides: Callable[[Any], dict[str, Any]]) -> None:
    """Register eval / extract / show on the `vireid` sub-command parser."""

    def bind(command: Callable[[argparse.Namespace, dict[str, Any]], int]) -> Callable[[argparse.Namespace], int]:
        return lambda args: command(args, overrides(args.overrides))

    ev = sub.add_parser("eval", help="evaluate a saved model on any dataset and protocol",
                        description="Evaluate a saved model on every test protocol of a dataset: the one it was "
                                    "trained on, or another (--set data.dataset=llcm --set data.root=...: "
                                    "cross-dataset evaluation). Writes a trial's records and tables into "
                                    "RESULTS_DIR/NAME.")
    ev.add_argument("model", help=MODEL_HELP)
    add_set(ev)
    ev.add_argument("--rerank", action="store_true",
                    help="k-reciprocal re-ranking (evaluation.rerank.k1 / k2 / lambda_value: 20, 6, 0.3)")
    ev.add_argument("--protocol", help="tabulate only this protocol (default: every protocol evaluated; all of "
                    "them are evaluated and recorded either way)")
    ev.add_argument("--name", default="eval", help="results sub-folder, one plain folder name (default: eval)")
    ev.add_argument("--results-dir", default="results", help="where result folders go (default: results)")
    ev.add_argument("--quiet", action="store_true", help="no progress display")
    ev.set_defaults(func=bind(cmd_eval))

    ex = sub.add_parser("extract", help="test features of every image under a folder, as .npz",
                        description="Extract the test features of every image under FOLDER (recursively) with "
                                    "a saved model; write features (float32, N x D) and paths (relative to "
                                    "FOLDER) to an .npz file.")
    ex.add_argument("model", help=MODEL_HELP)
    ex.add_argument("folder", help="folder of images (searched recursively)")
    ex.add_argument("--modality", required=True, choices=["visible", "infrared"],
                    help="which stream of the two-stream network the images go through")
    ex.add_argument("--out", required=True, help="output .npz file")
    add_set(ex)
    ex.add_argument("--quiet", action="store_true", help="no progress display")
    ex.set_defaults(func=bind(cmd_extract))

    sh = sub.add_parser("show", help="qualitative figures of a saved model: ranked lists, t-SNE, distances",
                        description="Draw cross-modality ranked lists, a t-SNE embedding of test features and "
                                    "histograms of intra-/inter-identity distances per modality pair, for one "
                                    "protocol of a dataset, as PNG and PDF.")
    sh.add_argument("model", help=MODEL_HELP)
    add_set(sh)
    sh.add_argument("--protocol", help="test protocol (default: the dataset's first)")
    sh.add_argument("--trial", type=int, default=0, help="gallery trial drawn in the ranked lists (default 0)")
    sh.add_argument("--queries", type=int, default=6, help="queries in the ranked lists (default 6)")
    sh.add_argument("--top-k", type=int, default=10, help="gallery images per ranked list (default 10)")
    sh.add_argument("--tsne-identities", type=int, default=10,
                    help="identities in the t-SNE, a seeded sample, each in its own colour (default 10, at most 20)")
    sh.add_argument("--rerank", action="store_true", help="rank with k-reciprocal re-ranking")
    sh.add_argument("--out", default="figures", help="output folder (default: figures)")
    sh.add_argument("--quiet", action="store_true", help="no progress display")
    sh.set_defaults(func=bind(cmd_show))

    eb = sub.add_parser("export-backbone",
                        help="write a saved model's backbone as timm weights for model.pretrained_file",
                        description="Write the backbone of a saved model as the plain timm model's weights "
                                    "(safetensors) with a JSON card beside it (source model and config, "
                                    "versions, SHA-256). A run started with --set model.pretrained_file=OUT "
                                    "initialises its backbone (both modality stems) from it, as from ImageNet "
                                    "weights; the heads start fresh.")
    eb.add_argument("model", help=MODEL_HELP)
    eb.add_argument("out", help="output .safetensors file (the card is written beside it as .json)")
    eb.add_argument("--stem", default="visible", choices=["visible", "infrared"],
                    help="which modality's stem becomes the timm stem (default visible)")
    eb.set_defaults(func=cmd_export_backbone)

    from harness.data.registry import dataset_names

    im = sub.add_parser("import-checkpoint", help="a checkpoint saved by another VI-ReID code, as a saved model",
                        description="Read a checkpoint another code saved (torch.save of a dict holding the "
                                    "network's state dict) with torch.load(weights_only=True) only, map its keys "
                                    "onto the matching method's network and write a saved model (OUT.safetensors "
                                    "+ OUT.json card naming the source, the file's SHA-256 and the config the "
                                    "source implies) for vireid eval / show / extract.")
    im.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                    help="the code that saved FILE, a registered checkpoint importer: agw (mangye16/"
                         "Cross-Modal-Re-ID-baseline), mclnet (bitreidgroup/Modality-Confusion-Learning), caj, "
                         "deen (ZYK100/LLCM DEEN), ...")
    im.add_argument("file", help="the checkpoint file (e.g. sysu_agw_p4_n8_lr_0.1_seed_0_best.t)")
    im.add_argument("out", help="output OUT.safetensors (the .json card is written beside it)")
    im.add_argument("--dataset", required=True, choices=[*dataset_names(), "synthetic"],
                    help="the dataset the checkpoint was trained on (its protocols are evaluated by default)")
    add_set(im)
    im.set_defaults(func=bind(cmd_import_checkpoint))
