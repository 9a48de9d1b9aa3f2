"""At the end of embedding: the text tower's vectors of the driving prompts (``RunLayout.text_queries``), the queries
that tune the text index when that index will be approximate (``job.index.text``)."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..config import JobConfig
from ..errors import UsageError
from ..index.plan import plan_index
from ..model import prompts
from ..runfolder import TRAINED_COLUMN, RunLayout, write_npy

if TYPE_CHECKING:
    from ..model.load import LoadedModel

log = logging.getLogger(__name__)


def encode_text_queries(cfg: JobConfig, lm: LoadedModel, layout: RunLayout, rows: int) -> bool:
    """At the end of embedding: the text tower's vectors of the driving prompts (``RunLayout.text_queries``), the
    queries that tune the text index, when that index will be approximate (for a shard: at the merged run's size);
    an exact one needs no tuning. Returns whether it wrote them."""
    if lm.text_column != TRAINED_COLUMN:
        return False
    try:
        n = rows * (cfg.source.shard[1] if cfg.source.shard else 1)
        if plan_index(n, lm.embed_dim, cfg.index).kind == "flat":
            return False
    except UsageError:  # no index fits the memory budget: the index step will say so; the queries cost little
        pass
    import torch

    from ..model.load import encode_text

    t0 = time.perf_counter()
    with torch.inference_mode():
        queries = encode_text(lm, prompts())
    write_npy(layout.text_queries, queries)
    log.info("encoded %d text prompts to tune the text index in %.1f s -> %s", len(queries),
             time.perf_counter() - t0, layout.text_queries)
    return True
