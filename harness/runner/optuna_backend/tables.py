"""The study's own view as CSV: `optuna_trials.csv` (every trial) and `pareto.csv` (several objectives)."""

from __future__ import annotations

import optuna

from harness.atomic import atomic_write_text
from harness.results.stats import pareto_front
from harness.runner.optuna_backend.job import PARETO_CSV, TRIALS_CSV, OptunaJob
from harness.runner.optuna_backend.study import superseded_numbers
from harness.search import GRID_INDEX


def write_study_tables(job: OptunaJob, study: optuna.Study) -> None:
    """Every trial with its label, params and objectives; `is_pareto` marks the non-dominated ones."""
    attrs = ("number", "values" if job.multi_objective else "value", "state", "params", "user_attrs",
             "datetime_start", "duration")
    df = study.trials_dataframe(attrs=attrs)
    if df.empty:
        atomic_write_text(job.folder / TRIALS_CSV, "")
        return
    names = {f"{prefix}_{name}": name for name in job.objectives for prefix in ("value", "values")}
    names.update({f"values_{i}": name for i, name in enumerate(job.objectives)})
    names.update({"value": job.objectives[0], f"user_attrs_{GRID_INDEX}": GRID_INDEX})
    df = df.rename(columns=names)
    df["retried"] = df["number"].isin(superseded_numbers(study.get_trials(deepcopy=False)))
    if job.multi_objective:
        usable = df[(df["state"] == "COMPLETE") & ~df["retried"]]
        front = pareto_front(usable[job.objectives].to_numpy(dtype=float), tuple(job.directions))
        df["is_pareto"] = df.index.isin(usable.index[front])
        atomic_write_text(job.folder / PARETO_CSV, df[df["is_pareto"]].to_csv(index=False))
    atomic_write_text(job.folder / TRIALS_CSV, df.to_csv(index=False))
