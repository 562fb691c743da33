"""A model folder's files checked readable before any work starts, without torch.

A truncated or damaged file in a folder a user hands to ``sfr-ds merge``, ``mine --teacher self:``
or ``eval`` (or in its base model) is one ``RunDirError`` naming the file, not a library traceback
minutes into the job. Only what is cheap is read: JSON files whole (they are small) and the
headers of safetensors files (the tensors a header describes must end where the file does);
never the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from .run_dir import ADAPTER_CONFIG, META, RunDirError, base_model_path, is_adapter, read_meta

# what every command that encodes with a model folder reads from its sfr_ds.json (an adapter's also
# names its base; a merged folder is its own)
META_KEYS = ("pooling", "normalize", "append_eos", "query_max_len", "doc_max_len", "dtype")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_json(path: Path):
    """A JSON file's value (any: sentence-transformers' modules.json is a list)."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing") from None
    except UnicodeDecodeError as e:
        raise RunDirError(f"{path}: not UTF-8 (byte {e.start}); the file is damaged") from None
    except (OSError, ValueError) as e:
        raise RunDirError(
            f"{path}: cannot be read (not valid JSON: {e}); the file is truncated or damaged"
        ) from None
    return data


def _header(path: Path, size: int) -> tuple[int, dict]:
    """(header length, header) of a safetensors file: 8 bytes of length, then that much JSON."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            raise RunDirError(f"{path}: truncated ({size} bytes; its header is cut short)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise RunDirError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise RunDirError(f"{path}: not a safetensors file (its header is not a mapping)")
    return n, header


def check_safetensors(path: Path) -> None:
    """The header parses and the tensors it describes end exactly where the file does."""
    size = path.stat().st_size
    n, header = _header(path, size)
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise RunDirError(f"{path}: not a safetensors file (its header lists no data offsets)") from None
    if 8 + n + end != size:
        raise RunDirError(
            f"{path}: holds {size} bytes but its header describes {8 + n + end}; "
            "the file is truncated or damaged"
        )


def check_files(folder: Path) -> None:
    """Every JSON and safetensors file directly in ``folder``."""
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.suffix == ".json":
            check_json(path)
        elif path.is_file() and path.suffix == ".safetensors":
            check_safetensors(path)


def check_transformers_folder(path: Path) -> None:
    """config.json and weights, readable: what transformers needs to load a folder."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise RunDirError(f"{path}: no config.json; neither an sfr-ds model folder (no {META}) nor a model")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise RunDirError(f"{path}: no model weights (*.safetensors or pytorch_model.bin)")
    check_files(path)
    if not isinstance(check_json(path / "config.json"), dict):
        raise RunDirError(f"{path / 'config.json'}: expected a JSON object")


def check_base(base: str, named_in: Path | None = None) -> None:
    """The base model an adapter names: a known ``builtin:`` name, an existing local folder that
    loads, or a hub name (left to the hub). ``named_in`` is the file that names it, for messages."""
    from .zoo import BUILTINS

    where = f"{named_in}: " if named_in else ""
    if base.startswith("builtin:"):
        if base not in BUILTINS:
            raise RunDirError(
                f"{where}base_model: unknown built-in model {base!r}; known: {sorted(BUILTINS)}"
            )
    elif Path(base).expanduser().is_dir():
        check_transformers_folder(Path(base).expanduser())
    elif base.startswith(("/", ".", "~")) or Path(base).expanduser().exists():
        raise RunDirError(f"{where}its base model {base!r} is not a folder here (moved or deleted?)")


def check_model_folder(folder: Path) -> dict:
    """``sfr_ds.json`` of a model folder, once every file it and its random-init base hold is
    readable and an adapter has its config and weights; each problem names its file."""
    folder = Path(folder)
    meta = read_meta(folder)
    needed = META_KEYS if meta.get("merged") else ("base_model", *META_KEYS)
    if missing := [k for k in needed if k not in meta]:
        raise RunDirError(f"{folder / META}: lacks {missing}; the folder is incomplete")
    check_files(folder)
    if not meta.get("merged") and meta.get("lora", True):
        if not (folder / ADAPTER_CONFIG).is_file():
            raise RunDirError(f"{folder / ADAPTER_CONFIG}: missing; the adapter folder is incomplete")
        if not any((folder / name).is_file() for name in ADAPTER_WEIGHTS):
            raise RunDirError(f"{folder / ADAPTER_WEIGHTS[0]}: missing; the adapter folder is incomplete")
    if meta.get("random_init") or is_adapter(folder):
        check_base(base_model_path(folder, meta), folder / META)
    return meta
