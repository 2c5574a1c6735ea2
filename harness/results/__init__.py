"""Records -> statistics -> tables and figures.

- `records`: the one record type (`TrialRecord`) every backend stores
- `metrics`: the metric registry (name, label, direction, digits)
- `store`: `ResultStore`, the SQLite record store of a sweep (read without modifying it)
- `stats`: confidence intervals, paired tests, Pareto front
- `tables` / `paper`: per-protocol statistics tables and the paper-style table across protocols
- `plots`: CMC curves, ablation bars, accuracy vs throughput
- `report`: `write_report`, everything above for one sweep folder
"""

from harness.atomic import atomic_write_text
from harness.results.metrics import ACCURACY_METRICS, METRICS, TABLE_METRICS, Metric, metric, objective_direction
from harness.results.records import TrialRecord, dataset_label
from harness.results.report import Report, print_report, write_report
from harness.results.stats import pareto_front
from harness.results.store import STORE_NAME, ResultStore
from harness.results.tables import Summary, add_deltas, summarise, to_markdown

__all__ = ["ACCURACY_METRICS", "METRICS", "STORE_NAME", "TABLE_METRICS", "Metric", "Report", "ResultStore", "Summary",
           "TrialRecord", "add_deltas", "atomic_write_text", "dataset_label", "metric", "objective_direction",
           "pareto_front", "print_report", "summarise", "to_markdown", "write_report"]
