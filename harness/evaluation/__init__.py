"""Ranking metrics for VI-ReID: CMC, mAP and mINP under the SYSU-MM01, RegDB and LLCM rules.

Every query is ranked against the gallery by ascending distance. Ties are broken by a STABLE
sort, so gallery entries at equal distance keep their gallery index order (lower index ranks
first); restricting the gallery to a subset therefore keeps the relative order of the rest.

Protocol rules (per query, see the protocols spec):

* ``"sysu"``: cameras are SYSU camera numbers 1..6. For a query from cam3 every gallery entry
  from cam2 is removed, whatever its identity. CMC is de-duplicated: only the first occurrence
  of each identity in the ranked list counts, so the CMC rank of a query is 1 + the number of
  distinct other identities ranked before its first true match.
* ``"regdb"``: no exclusion; standard CMC (rank of the first true match in the full list).
* ``"llcm"``: de-duplicated CMC as for SYSU; the excluded gallery entries are those with the
  query's identity AND the query's camera.

AP is computed on the full (not de-duplicated) list after exclusion: the mean over the hits of
(#hits up to rank k) / k. INP = #hits / rank of the last hit. A query with no true match left
after exclusion is skipped: it counts in none of the means. CMC[k-1] is the fraction of valid
queries whose CMC rank is <= k; when the ranked list (or its de-duplicated form) is shorter than
``max_rank``, every valid query already matched within it, so the curve simply stays at its
last value up to ``max_rank``.

Everything is computed with torch on the device of the distance matrix (or of the query
features), in blocks of queries so that memory stays bounded; within a block all queries are
processed together.
"""

from harness.evaluation.metrics import evaluate_trials, pairwise_distance, rank_metrics
from harness.evaluation.ranking import PROTOCOLS

__all__ = ["PROTOCOLS", "evaluate_trials", "pairwise_distance", "rank_metrics"]
