"""The Faiss import, deferred until an index is touched and with the loader's chatter kept at WARNING."""
from __future__ import annotations

import logging
from typing import Any


def load_faiss() -> Any:
    """The ``faiss`` module (imported on first use: planning and the CLI's ``--help`` never pay for it)."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss
