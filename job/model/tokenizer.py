"""Tokenizers: a model's text side, from open_clip, from the Hugging Face hub, or from a local folder.

CLIP models (``ViT-L-14`` …) tokenize with open_clip's bundled BPE vocabulary: nothing to download. SigLIP and
SigLIP 2 models name a Hugging Face tokenizer in their config (``text_cfg.hf_tokenizer_name``, e.g.
``timm/ViT-L-16-SigLIP2-256``: Gemma's 256k vocabulary), which open_clip fetches from the hub through
``transformers``. Where the hub cannot be reached (an air-gapped machine, a locked-down VPC, this project's tests),
``--tokenizer DIR`` — or ``$JOB_TOKENIZER_DIR`` (``config.TOKENIZER_ENV``) — names a folder holding those files. It is
loaded through open_clip's own ``HFTokenizer`` with the model's context length and text cleaning
(``text_cfg.context_length``, ``tokenizer_kwargs``), exactly as ``open_clip.get_tokenizer`` builds it from the hub, so
a copy of the hub's files tokenizes as the hub's do (``tests/test_siglip.py``). Make the folder once, where the hub
is reachable::

    hf download timm/ViT-L-16-SigLIP2-256 --include "*token*" --local-dir DIR

(``hf`` comes with ``huggingface_hub``; any folder that ``transformers.AutoTokenizer.from_pretrained`` reads will do.)
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from ..config import TOKENIZER_ENV
from ..errors import UsageError

log = logging.getLogger(__name__)


def tokenizer_folder(explicit: str | None) -> str | None:
    """The tokenizer folder this machine uses: ``--tokenizer``, else ``$JOB_TOKENIZER_DIR``, else None (the hub)."""
    return explicit or os.environ.get(TOKENIZER_ENV) or None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _text_cfg(name: str, folder: str | None) -> dict[str, Any] | None:
    """The model's ``text_cfg`` (built-in config, or the folder's ``open_clip_config.json`` for an hf-hub model);
    None when it cannot be known without the hub."""
    import open_clip

    if folder and os.path.isfile(os.path.join(folder, "open_clip_config.json")):
        with open(os.path.join(folder, "open_clip_config.json"), encoding="utf-8") as f:
            doc = json.load(f)
        return dict((doc.get("model_cfg") or doc).get("text_cfg") or {})
    if name.startswith(("hf-hub:", "local-dir:")):
        return None
    cfg = open_clip.get_model_config(name)
    return dict((cfg or {}).get("text_cfg") or {})


def load_tokenizer(name: str, explicit_folder: str | None = None, *, cache_dir: str | None = None) -> tuple[Any, str]:
    """(tokenizer, where it came from) for open_clip model ``name``: ``open_clip`` (bundled), ``hf-hub:REPO`` or
    ``dir:FOLDER``. A tokenizer that cannot be had is a UsageError saying how to get one (before anything is written).
    """
    import open_clip

    folder = tokenizer_folder(explicit_folder)
    text_cfg = _text_cfg(name, folder)
    hf_name = (text_cfg or {}).get("hf_tokenizer_name") or ""
    if text_cfg is not None and not hf_name:
        if folder:
            log.debug("%s tokenizes with open_clip's bundled vocabulary; the tokenizer folder %s is not used", name, folder)
        return open_clip.get_tokenizer(name), "open_clip"
    try:
        import transformers  # noqa: F401  (open_clip's HFTokenizer imports it lazily: fail here, with the fix)
    except ImportError as exc:
        raise UsageError(f"model {name} tokenizes with the Hugging Face tokenizer {hf_name or name}: install the "
                         f"transformers package (it is in requirements.lock)") from exc
    if folder:
        if not os.path.isdir(folder):
            raise UsageError(f"tokenizer folder {folder!r} (--tokenizer or ${TOKENIZER_ENV}) is not a folder")
        if text_cfg is None:
            raise UsageError(f"tokenizer folder {folder!r} for {name}: it needs the model's open_clip_config.json too "
                             f"(download the hub repository's files into it)")
        from open_clip.tokenizer import HFTokenizer

        try:
            tok = HFTokenizer(folder, context_length=text_cfg.get("context_length") or 77,
                              tokenizer_mode=text_cfg.get("tokenizer_mode"), **dict(text_cfg.get("tokenizer_kwargs") or {}))
        except Exception as exc:  # transformers raises OSError, ValueError, … for a folder it cannot read
            raise UsageError(f"tokenizer folder {folder!r} for {name}: no tokenizer could be loaded from it "
                             f"({_first_line(exc)}); it should hold the files of {hf_name or 'the model'}") from exc
        return tok, f"dir:{folder}"
    try:
        tok = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except Exception as exc:  # no network, no hub access, a gated repo: all mean "no tokenizer here"
        repo = hf_name or name.removeprefix("hf-hub:")
        raise UsageError(
            f"model {name} needs its tokenizer {repo} from the Hugging Face hub, which failed ({_first_line(exc)}); "
            f"without the hub, download it once elsewhere (hf download {repo} --include '*token*' --local-dir DIR) "
            f"and give --tokenizer DIR or set ${TOKENIZER_ENV}") from exc
    return tok, f"hf-hub:{hf_name or name.removeprefix('hf-hub:')}"
