"""Embed stage: one attempt of embedding a source into a run folder. ``attempt`` (``build``: every part of an
attempt checked before anything is written — source, lease, model, resume, writer, encoder tiers; ``Embedding.run``),
``loop`` (``EmbedLoop`` over narrow interfaces that ``tests/test_embed_loop.py`` drives with fakes), ``parts``
(``PartWriter``: parts committed atomically), ``resume`` (what earlier attempts committed, one copy per path, the
completeness check), ``fallback`` (fast paths that fall back instead of failing), ``progress`` (tqdm and ``_STATUS``),
``text_queries`` (the text tower's vectors of the driving prompts, to tune the text index).

May import: the ground floor, ``job.runfolder``, ``job.status``, ``job.sources``, ``job.decode``, ``job.model``,
``job.index`` (its plan only).
"""
from __future__ import annotations

from .attempt import Embedding, build, embed

__all__ = ["Embedding", "build", "embed"]
