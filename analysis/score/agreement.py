"""Agreement between criteria on one run: rank correlation (Spearman, Kendall) and top-k overlap tables."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from analysis.errors import SelectionError
from analysis.score.criteria import get_criterion, scores_for
from analysis.store.jsonio import clean_json
from analysis.score.selection import rank_blocks, rank_correlation, topk_overlap


def agreement_matrix(result, criteria: Sequence[str], granularity: str | None = None, k: int | None = None,
                     protected: Iterable[int] | None = None) -> dict:
    """Pairwise agreement of criteria on one run: Spearman and Kendall rank correlation of their
    *droppability* (score for ``redundant="low"`` criteria, −score for ``"high"``, so +1 means the same
    drop order) over the unprotected blocks, and top-k overlap of their drop orders (``k`` defaults to
    a quarter of the blocks). Criteria the run cannot score are listed in ``unavailable`` with the reason.
    """
    g = granularity or result.granularity
    prot = list(result.protected if protected is None else protected)
    keys, orders, unavailable = {}, {}, {}
    for name in criteria:
        try:
            c = get_criterion(name)
            s = scores_for(result, name, g)
        except SelectionError as exc:
            unavailable[name] = str(exc)
            continue
        keys[name] = s if c.redundant == "low" else -s
        orders[name] = rank_blocks(s, c.redundant, prot)
    names = list(keys)
    L = result.num_layers
    free = [i for i in range(L) if i not in set(prot)]
    kk = max(1, L // 4) if k is None else int(k)
    m = len(names)
    sp, kd, ov = (np.full((m, m), np.nan) for _ in range(3))
    for a in range(m):
        for b in range(m):
            rc = rank_correlation(keys[names[a]][free], keys[names[b]][free])
            sp[a, b], kd[a, b] = rc["spearman"], rc["kendall"]
            ov[a, b] = topk_overlap(orders[names[a]], orders[names[b]], kk)
    return clean_json({"criteria": names, "granularity": g, "k": kk, "protected": prot, "spearman": sp,
                   "kendall": kd, "topk_overlap": ov, "orders": orders, "unavailable": unavailable})
