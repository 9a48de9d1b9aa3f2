"""Decode stage: JPEG bytes → uint8 model inputs at the model's size (``pad`` / ``crop`` / ``squash``), each image's
``content_hash`` taken on the way. ``cpu``: reduced-scale libjpeg decode in a process pool (``DecodePool``) and the
``DecodeStage`` protocol both stages meet; ``gpu``: nvJPEG (``GpuDecodeStage``, ``choose_decoder``) — it imports
torch, so import it as ``job.decode.gpu`` where it is needed.

May import: the ground floor only (``job.errors``, ``job.values``, ``job.config``, ``job.fsutil``).
"""
from __future__ import annotations

from .cpu import (
    HASH_BYTES,
    DecodeError,
    DecodePool,
    DecodeResult,
    DecodeStage,
    DecodeTask,
    Item,
    content_hash,
    decode_batch,
    decode_image,
    geometry,
)

__all__ = ["HASH_BYTES", "DecodeError", "DecodePool", "DecodeResult", "DecodeStage", "DecodeTask", "Item",
           "content_hash", "decode_batch", "decode_image", "geometry"]
