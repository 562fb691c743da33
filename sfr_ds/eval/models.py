"""Which model to evaluate and how it reads texts: a run, its adapter, a merged folder or any HF model.

Nothing here imports torch until ``load_model``: a login node only needs ``ModelSpec``,
``fingerprint`` and ``label`` to write a manifest and submit, and ``check_model`` to refuse a
model that cannot load (a missing path, a folder that is no model, a broken adapter) at once.

Instruction policy (``ModelSpec.instructions``; ``None`` means the model kind's default):

- sfr-ds runs and adapters, and HF decoders (last-token pooling, the e5-mistral family): queries get
  ``Instruct: {task instruction}\\nQuery: ``, documents none, symmetric tasks the instruction on
  every text, as e5-mistral and SFR-Embedding-Mistral were evaluated.
- HF encoders (BERT-like, e.g. all-MiniLM-L6-v2): no instruction anywhere; their published scores
  use none. Pooling comes from the sentence-transformers config when the folder has one, else mean.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model_files import check_model_folder, check_transformers_folder
from ..run_dir import (
    META,
    RunDir,
    base_model_path,
    content_digest,
    is_adapter,
    model_folder,
    read_meta,
)

DEFAULT_MAX_LEN = 512  # e5-mistral's evaluation length, for queries and documents alike
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # a hub repo id's shape


class ModelError(ValueError):
    """A model that cannot be evaluated; the message names what is missing or broken."""


@dataclass(frozen=True)
class ModelSpec:
    source: str  # run dir, adapter dir, merged/HF folder, hub name or builtin:NAME
    pooling: str | None = None
    instructions: bool | None = None
    query_max_len: int | None = None
    doc_max_len: int | None = None
    dtype: str | None = None  # None: bf16 on GPU, fp32 on CPU
    batch_size: int = 32  # texts per padded batch (max_tokens None)
    max_tokens: int | str | None = "auto"  # per packed chunk; "auto": packed on GPU, padded on CPU

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """What decides the embeddings: everything but how texts are batched (packed and padded
        batches agree to 1e-5)."""
        return {k: v for k, v in self.to_json().items() if k not in ("batch_size", "max_tokens")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**data)

    def normalized(self) -> ModelSpec:
        """Local paths made absolute, so a Slurm job started elsewhere finds the same model."""
        path = Path(self.source).expanduser()
        if path.exists():
            return dataclasses.replace(self, source=str(path.resolve()))
        return self


def model_spec(source: str, **options) -> ModelSpec:
    """The spec the ``sfr-ds eval`` model options describe (keywords: the spec's fields), local
    paths made absolute."""
    return ModelSpec(source, **options).normalized()


def kind(source: str) -> str:
    """'run' (a run directory, or an adapter folder: base + adapter, encoded as trained) or 'hf'
    (anything else, a model merged by sfr-ds included)."""
    path = Path(source)
    folder = model_folder(path)
    if folder is None:
        return "hf"
    return "run" if folder != path or is_adapter(folder) else "hf"


def owner(source: str) -> Path:
    """The run directory when ``source`` is a run's adapter folder (final/), else ``source``."""
    path = Path(source)
    if kind(source) == "run" and RunDir(path.parent).final == path:
        return path.parent
    return path


def label(spec: ModelSpec) -> str:
    """A short human name: the run directory's name, or the model name's last part."""
    return owner(spec.source).name.replace("builtin:", "") or spec.source


def _file_stamps(path: Path) -> list[str]:
    """Path, size and mtime of every file of a plain model folder (its default eval/ output left out)."""
    if not path.is_dir():
        return []  # a hub name or builtin:NAME: the name is the identity
    files = sorted(f for f in path.rglob("*") if f.is_file() and "eval" not in f.relative_to(path).parts)
    return [f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]


def fingerprint(spec: ModelSpec) -> str:
    """Hash of the spec and of the model: a retrained run gets new results.

    A folder with sfr_ds.json (a run, an adapter, a merged model) counts by its content
    (``run_dir.content_digest``), not by where it lies, so a copied or moved run keeps its
    results and embeddings. A plain HF folder counts by its path and its files' sizes and times
    (rewritten weights get a new time): hashing a 14 GB model on every ``sfr-ds eval`` call, a
    login node's submit included, would take minutes.
    """
    folder = model_folder(spec.source)
    if folder is not None:
        identity = {k: v for k, v in spec.identity().items() if k != "source"}
        stamps = [content_digest(folder)]
    else:
        identity, stamps = spec.identity(), _file_stamps(Path(spec.source))
    h = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for stamp in stamps:
        h.update(f"{stamp}\n".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- checks before any work


def check_model(source: str) -> None:
    """Refuse, before any work and without torch, a model that cannot load: a local path that does
    not exist, a folder that is neither an sfr-ds model folder nor a transformers model, an sfr-ds
    folder whose metadata, adapter or random-init base is unreadable or gone, an unknown
    ``builtin:`` name, or (offline) a hub name that is not in the local cache."""
    if source.startswith("builtin:"):
        from ..zoo import BUILTINS

        if source not in BUILTINS:
            raise ModelError(f"unknown built-in model {source!r}; known: {sorted(BUILTINS)}")
        return
    path = Path(source).expanduser()
    if path.exists():
        _check_folder(path)
    elif not HUB_NAME.fullmatch(source):  # a path: /x, ./x, ~/x, a/b/c
        raise ModelError(f"{source}: no such model folder")
    else:
        _check_hub_name(source)


def _check_hub_name(name: str) -> None:
    """Offline, a hub name must be in the local cache; online, the hub answers when it loads."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise ModelError(
            f"{name}: no such model folder, and not a model in the Hugging Face cache "
            "(HF_HUB_OFFLINE is set, so nothing is downloaded)"
        )


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise ModelError(f"{path}: a file, not a model folder")
    folder = model_folder(path)
    if folder is None:
        if RunDir(path).config_file.exists():
            raise ModelError(
                f"{path}: a training run with no final model ({RunDir(path).final} has no {META}); "
                "let it finish, or `sfr-ds export` one of its checkpoints"
            )
        check_transformers_folder(path)
        return
    meta = check_model_folder(folder)  # RunDirError naming the file (a random-init base included)
    if is_adapter(folder):
        check_model(base_model_path(folder, meta))
    else:
        check_transformers_folder(folder)


@dataclass
class LoadedModel:
    """A ``TextEncoder`` plus the resolved policy, so callers never re-derive defaults."""

    encoder: Any  # sfr_ds.encode.TextEncoder
    instructions: bool
    settings: dict[str, Any]


def _st_config(path: Path) -> tuple[str | None, int | None]:
    """(pooling, max_seq_length) from a sentence-transformers folder, else (None, None)."""
    pooling_cfg, st_cfg = path / "1_Pooling" / "config.json", path / "sentence_bert_config.json"
    pooling = max_len = None
    if pooling_cfg.exists():
        cfg = json.loads(pooling_cfg.read_text())
        modes = {
            "pooling_mode_mean_tokens": "mean",
            "pooling_mode_cls_token": "cls",
            "pooling_mode_lasttoken": "last",
        }
        pooling = next((name for key, name in modes.items() if cfg.get(key)), None)
    if st_cfg.exists():
        max_len = json.loads(st_cfg.read_text()).get("max_seq_length")
    return pooling, max_len


def _is_encoder(path: str) -> bool:
    """BERT-like (has a masked-LM head type) rather than a decoder."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return AutoConfig.from_pretrained(path).model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _max_positions(encoder) -> int:
    config = getattr(encoder.embedder.backbone, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_LEN)


def load_model(spec: ModelSpec, device: str | None = None) -> LoadedModel:
    """Load the model the way it was trained (runs) or its kind's defaults (HF models)."""
    import torch

    from ..config import ModelConfig
    from ..encode import TextEncoder
    from ..zoo import resolve_model_path

    dtype = spec.dtype or ("bf16" if torch.cuda.is_available() else "fp32")
    if kind(spec.source) == "run":
        encoder = TextEncoder.from_run(
            spec.source, batch_size=spec.batch_size, device=device, dtype=dtype, max_tokens=spec.max_tokens
        )
        instructions, st_max = True, None
        if spec.pooling and spec.pooling != encoder.embedder.pooling:
            raise ValueError(
                f"{spec.source} was trained with {encoder.embedder.pooling} pooling; "
                f"--pooling {spec.pooling} would not evaluate the trained model"
            )
    else:
        path = resolve_model_path(spec.source)
        folder = model_folder(path)  # a folder merged by sfr-ds keeps its pooling
        own = read_meta(folder) if folder is not None else {}
        st_pooling, st_max = _st_config(Path(path))
        encoder_like = _is_encoder(path)
        pooling = spec.pooling or own.get("pooling") or st_pooling or ("mean" if encoder_like else "last")
        instructions = not encoder_like
        cfg = ModelConfig(
            name_or_path=spec.source,
            pooling=pooling,
            dtype=dtype,
            normalize=own.get("normalize", True),
            append_eos=own.get("append_eos"),
        )
        encoder = TextEncoder.from_model_config(
            cfg, batch_size=spec.batch_size, device=device, max_tokens=spec.max_tokens
        )
    limit = _max_positions(encoder)
    encoder.settings.query_max_len = min(spec.query_max_len or st_max or DEFAULT_MAX_LEN, limit)
    encoder.settings.doc_max_len = min(spec.doc_max_len or st_max or DEFAULT_MAX_LEN, limit)
    if spec.instructions is not None:
        instructions = spec.instructions
    settings = {
        "kind": kind(spec.source),
        "pooling": encoder.embedder.pooling,
        "dtype": dtype,
        "instructions": instructions,
        "device": str(encoder.device),
        "append_eos": encoder.settings.append_eos,
        "query_max_len": encoder.settings.query_max_len,
        "doc_max_len": encoder.settings.doc_max_len,
        "embedding_dim": int(encoder.embedder.backbone.config.hidden_size),
    }
    return LoadedModel(encoder, instructions, settings)
