"""Close the search loop: retrain the configuration a search chose and evaluate it on the test protocols.

A search scores trials on held-out TRAINING identities only. The final step takes its best trial
(on the search's objective, or the one a `final:` block names), retrains that configuration on
all training identities (`data.val_identities: 0`) with the search's seeds (or the block's
`seeds`), and tabulates the test protocols in `results/<search>-final/`, one row that states which
search chose it and on which objective. The chosen configuration is exported as `chosen.yaml`,
which `vireid run --config` accepts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import InputError
from harness.sweep import SweepSpec

if TYPE_CHECKING:
    from harness.results import Report

CHOSEN_CONFIG = "chosen.yaml"


@dataclass(frozen=True)
class FinalChoice:
    search: str
    objective: str
    direction: str
    trial_key: str
    value: float
    candidates: int
    config: dict[str, Any]
    seeds: tuple[int, ...]

    def describe(self) -> str:
        return (f"{self.search}: {'best' if self.direction == 'max' else 'lowest'} {self.objective} "
                f"({self.value:.2f}, trial {self.trial_key}, of {self.candidates} finished)")


def choose(spec: SweepSpec, folder: Path, *, trial: str | None = None) -> FinalChoice:
    """The configuration a finished search chose: its best trial, or the trial `trial` names."""
    from harness.results import ResultStore, metric
    from harness.results.stats import pareto_front

    search = spec.search
    if search is None:
        raise InputError(f"{spec.source}: --final needs a search spec (a 'search' block)")
    final = spec.final or {}
    trial = trial or final.get("trial")
    df = ResultStore(folder).dataframe()
    ok = df[df["status"] == "ok"].drop_duplicates("trial_key") if not df.empty else df
    objectives = search.objectives or [search.objective]
    objective = final.get("objective") or (objectives[0] if len(objectives) == 1 or trial else None)
    if objective is None:
        raise InputError(f"{spec.source}: the search has several objectives ({', '.join(objectives)}): name the "
                         f"Pareto choice with final.trial / --final-trial, or one objective with final.objective")
    if ok.empty or objective not in ok:
        raise InputError(f"{folder}: the search has no finished trial with {objective!r}; run the search first")
    values = ok[objective].astype(float)
    ok = ok[np.isfinite(values.to_numpy())]
    direction = metric(objective).direction
    if trial is not None:
        match = ok[(ok["trial_key"] == trial) | (ok.get("trial_id", ok["trial_key"]).astype(str) == trial)]
        if match.empty:
            raise InputError(f"final.trial: no finished trial {trial!r} in {folder}")
        if len(objectives) > 1:
            points = ok[objectives].to_numpy(float)
            front = ok.iloc[pareto_front(points, tuple(metric(o).direction for o in objectives))]
            if match.iloc[0]["trial_key"] not in set(front["trial_key"]):
                raise InputError(f"final.trial: {trial!r} is not on the Pareto front of {', '.join(objectives)}; "
                                 f"front: {', '.join(front['trial_key'])}")
        row = match.iloc[0]
    else:
        order = ok[objective].astype(float)
        row = ok.loc[order.idxmax() if direction == "max" else order.idxmin()]
    seeds = final.get("seeds") or sorted(int(s) for s in df["seed"].dropna().unique())
    return FinalChoice(search=spec.name, objective=objective, direction=direction, trial_key=str(row["trial_key"]),
                       value=float(row[objective]), candidates=len(ok), config=json.loads(row["config"]),
                       seeds=tuple(int(s) for s in seeds))


def final_spec(spec: SweepSpec, choice: FinalChoice) -> SweepSpec:
    """The final sweep: the chosen configuration on all training identities, one trial per seed."""
    from harness.config import TrialConfig

    tree = json.loads(json.dumps(choice.config))
    tree["data"]["val_identities"] = 0
    tree.pop("seed", None)
    TrialConfig.from_dict(tree, where=f"{spec.source}: chosen configuration")
    table = {k: v for k, v in spec.table.items() if k in ("protocols", "protocol", "metrics")}
    return SweepSpec(name=f"{spec.name}-final", base=tree, grid={"seed": list(choice.seeds)}, backend="local",
                     table=table, description=f"final run of {choice.describe()}", source=f"{spec.source}: final")


def export_config(choice: FinalChoice, path: Path) -> Path:
    """The chosen configuration (all training identities, first final seed) as YAML for `vireid run --config`."""
    import yaml

    from harness.atomic import atomic_write_text

    tree = json.loads(json.dumps(choice.config))
    tree["data"]["val_identities"] = 0
    tree["seed"] = choice.seeds[0]
    header = (f"# chosen by {choice.describe()}\n"
              f"# retrained on all training identities; final seeds: {', '.join(map(str, choice.seeds))}\n")
    atomic_write_text(path, header + yaml.safe_dump(tree, sort_keys=False))
    return path


def run_final(spec: SweepSpec, *, results_dir: str | Path = "results", trial: str | None = None,
              backend: str | None = None, quiet: bool = False) -> tuple[Path, Report]:
    """Choose, retrain on all training identities, evaluate on the test protocols, tabulate."""
    from harness.results import TABLE_METRICS, write_report
    from harness.runner import run_sweep

    search_folder = Path(results_dir) / spec.name
    choice = choose(spec, search_folder, trial=trial)
    final = final_spec(spec, choice)
    folder = run_sweep(final, backend=backend or (spec.final or {}).get("backend") or "local",
                       results_dir=results_dir, quiet=quiet)
    exported = export_config(choice, folder / CHOSEN_CONFIG)
    table = final.table
    protocols = table.get("protocols") or ([table["protocol"]] if table.get("protocol") else None)
    report = write_report(folder, protocols=protocols, metrics=table.get("metrics") or TABLE_METRICS,
                          label_columns={"chosen by": f"{choice.search} on {choice.objective}"},
                          notes=[(f"Configuration chosen by {choice.describe()}; retrained on all training "
                                  "identities.")])
    report.files.append(exported)
    return folder, report
