"""Embed stage: one attempt of embedding a source into a run folder. ``attempt`` (``build``: every part of an
attempt checked before anything is written — source, lease, model, resume, writer, encoder tiers; ``Embedding.run``),
``loop`` (``EmbedLoop`` over narrow interfaces that ``tests/test_embed_loop.py`` drives with fakes), ``parts``
(``PartWriter``: parts committed atomically), ``resume`` (what earlier attempts committed, one copy per path, the
completeness check), ``fallback`` (fast paths that fall back instead of failing), ``progress`` (tqdm and ``_STATUS``),
``text_queries`` (the text tower's vectors of the driving prompts, to tune the text index). ``job import`` makes
a run folder from vectors made elsewhere instead: ``vector_files`` (a parquet, clip-retrieval's output folder) and
``importer`` (checked first, then written like an attempt's parts, manifest last).

May import: the ground floor, ``job.runfolder``, ``job.status``, ``job.sources``, ``job.decode``, ``job.model``,
``job.index`` (its plan only), ``job.nuscenes`` (an imported path's dataroot, its metadata).
"""
from __future__ import annotations

from .attempt import Embedding, build, embed
from .importer import ImportOptions, import_vectors
from .vector_files import FORMATS as IMPORT_FORMATS

__all__ = ["IMPORT_FORMATS", "Embedding", "ImportOptions", "build", "embed", "import_vectors"]
