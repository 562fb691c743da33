"""Typed training configuration: YAML plus dotted ``key=value`` overrides, every bad field at once.

The config names the *global* batch (queries per optimizer step), so one file trains the same
model on 1, 2 or 64 ranks; per-rank sizes are derived at start and printed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ModelConfig:
    name_or_path: str = "intfloat/e5-mistral-7b-instruct"
    # Architecture kwargs (with ``model_type``) to build a randomly initialised backbone instead of
    # loading weights: tiny test models and 7B-shaped benchmarks need no download.
    random_init: dict | None = None
    tokenizer: str | None = None  # defaults to name_or_path
    pooling: Literal["last", "mean", "cls"] = "last"
    normalize: bool = True
    append_eos: bool | None = None  # None: append EOS exactly when pooling is 'last'
    dtype: Literal["fp32", "bf16"] = "bf16"
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False

    @property
    def appends_eos(self) -> bool:
        """EOS is appended to every text: by default exactly when the last token is pooled."""
        return self.pooling == "last" if self.append_eos is None else self.append_eos


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: str | list = "all-linear"


@dataclass
class DataConfig:
    train_files: list = field(default_factory=list)
    global_batch_size: int = 2048  # queries per optimizer step, summed over all ranks
    hard_negatives: int = 7
    # When a record has fewer than ``hard_negatives``: 'repeat' re-draws its own negatives (and
    # falls back to other records' documents if it has none), 'random' fills with documents of
    # other records of the same dataset, 'error' refuses to start.
    short_negatives: Literal["repeat", "random", "error"] = "repeat"
    query_max_len: int = 128
    doc_max_len: int = 256
    homogeneous: bool = True  # one dataset per global step (task-homogeneous batching)
    # 'global': the whole global batch from one dataset (the SFR recipe); 'rank': each rank's share
    # from one dataset, drawn independently (sentence-transformers' multi-dataset sampler under DDP),
    # so the other ranks' documents are mostly another task's. The plan then depends on the rank count.
    homogeneous_scope: Literal["global", "rank"] = "global"
    dataset_weights: dict = field(default_factory=dict)  # batches per epoch scale, default 1.0
    max_records_per_dataset: int | None = None
    seed: int = 42
    # Records converted once to Arrow (per node, or per cluster on shared storage) and memory-mapped
    # by every rank; false parses every file into every rank, as before (sfr_ds/data/arrow_store.py).
    memory_map: bool = True
    cache_dir: str = ""  # where the Arrow copies live; "" = $XDG_CACHE_HOME/sfr_ds/data (~/.cache)
    # Files in FlagEmbedding's or sentence-transformers' format, by name: {format, instruction,
    # task_type, dataset} given once per file (sfr_ds/data/formats.py).
    file_formats: dict = field(default_factory=dict)


@dataclass
class LossConfig:
    temperature: float = 0.02
    mask_duplicates: bool = True  # identical texts never act as each other's negatives
    # Matryoshka: the loss summed over these embedding prefixes (each renormalised when the model
    # normalises), e.g. [4096, 1024, 256]; [] trains the full width only, as the SFR recipe does.
    matryoshka_dims: list = field(default_factory=list)
    matryoshka_weights: list = field(default_factory=list)  # one per dim; [] weighs each 1
    # Qwen3-Embedding's false-negative mask: a candidate scoring above the query's positive + this
    # margin (raw score q·d, before the temperature) leaves the softmax. null: off (the SFR recipe);
    # 0.1 in Qwen3-Embedding.
    false_negative_margin: float | None = None


@dataclass
class GradCacheConfig:
    enabled: bool = True
    chunk_size: int = 32  # sequences per re-forward sub-batch, padded to the longest (packing off)
    check_replay: bool = False  # assert the grad pass reproduces the cached embeddings
    # Pack each chunk's real tokens into one row with attention kept per sequence (flash-attn's or
    # PyTorch's varlen kernel on GPU, sdpa per chunk on CPU): no compute on padding. Chunks are
    # filled longest-first up to ``chunk_tokens`` real tokens instead of ``chunk_size`` sequences.
    packing: bool = False
    chunk_tokens: int = 8192


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 100
    grad_clip: float = 1.0  # 0 disables clipping
    epochs: int = 1
    max_steps: int | None = None  # caps the run; the schedule decays to 0 at the last step


@dataclass
class DeepSpeedSection:
    config: str = "ds_configs/zero2_bf16.json"


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    save_every: int = 500
    keep_checkpoints: int = 2
    tensorboard: bool = True
    seed: int = 0  # model init and dropout; data order has its own seed
    dist_timeout_s: int = 1800
    # A NaN/inf loss on any rank: 'stop' ends the run with an error naming the step and dataset;
    # 'skip' drops that step's update (logged, counted) and goes on.
    on_nonfinite: Literal["stop", "skip"] = "stop"


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    gradcache: GradCacheConfig = field(default_factory=GradCacheConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """All problems of a config, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"invalid config: {problems[0]}")
        else:
            super().__init__("invalid config:\n  - " + "\n  - ".join(problems))


# ----------------------------------------------------------------------------- YAML files


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key repeated in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} repeated (first on line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike, what: str = "a mapping") -> dict:
    """A YAML file's top-level mapping; every mistake as one ``ConfigError`` naming the file and line
    (a missing file, a folder, bad UTF-8, a syntax error or tab indent, a repeated key)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"{path}: no such file"])
    if path.is_dir():
        raise ConfigError([f"{path}: is a folder; give a YAML file"])
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        hint = " (YAML indents with spaces, not tabs)" if "'\\t'" in str(e.problem) else ""
        raise ConfigError([f"{where}: {e.problem or e.context}{hint}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML ({e})"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be {what}, got {type(data).__name__}"])
    return data


# ----------------------------------------------------------------------------- parsing

# PyYAML follows YAML 1.1, where a float needs a dot: it reads ``lr: 1e-3`` as the string '1e-3'.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_float(value, tp):
    """'1e-3' as a float where the field takes floats; anything else unchanged."""
    takes_float = tp is float or float in typing.get_args(tp)
    return float(value) if takes_float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value) else value


def _type_ok(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or tp)


def _describe(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def build_dataclass(cls, data: dict, prefix: str, problems: list[str]):
    """Build dataclass ``cls`` from a mapping, appending every problem (dotted names) to ``problems``."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known: {', '.join(names)}"
            problems.append(f"unknown field '{dotted}'{hint}")
            continue
        tp = hints[key]
        value = _yaml_float(value, tp)
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(f"'{dotted}' must be a mapping of its fields, got {value!r}")
                continue
            kwargs[key] = build_dataclass(tp, value, dotted + ".", problems)
        elif not _type_ok(value, tp):
            problems.append(f"'{dotted}' must be {_describe(tp)}, got {value!r}")
        else:
            kwargs[key] = float(value) if tp is float else value
    return cls(**kwargs)


def _semantic_checks(c: TrainConfig) -> list[str]:
    p = []

    def need(cond, msg):
        if not cond:
            p.append(msg)

    need(bool(c.data.train_files), "'data.train_files' is empty; give one or more JSONL/Parquet files")
    need(
        all(isinstance(f, str) and f for f in c.data.train_files),
        "'data.train_files' must be a list of paths",
    )
    need(
        all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in c.optim.betas),
        "'optim.betas' must be two numbers",
    )
    need(c.run.dist_timeout_s >= 1, "'run.dist_timeout_s' must be >= 1 (seconds)")
    need(c.data.global_batch_size >= 1, "'data.global_batch_size' must be >= 1 (queries per optimizer step)")
    need(c.data.hard_negatives >= 0, "'data.hard_negatives' must be >= 0")
    need(c.data.query_max_len >= 2, "'data.query_max_len' must be >= 2 (room for text and EOS)")
    need(c.data.doc_max_len >= 2, "'data.doc_max_len' must be >= 2 (room for text and EOS)")
    for name, w in c.data.dataset_weights.items():
        need(
            isinstance(w, (int, float)) and w >= 0,
            f"'data.dataset_weights.{name}' must be a number >= 0, got {w!r}",
        )
    need(
        c.data.homogeneous or c.data.homogeneous_scope == "global",
        "'data.homogeneous_scope: rank' needs data.homogeneous=true",
    )
    need(c.loss.temperature > 0, "'loss.temperature' must be > 0 (0.02 in the SFR recipe)")
    p += _matryoshka_checks(c.loss)
    fn = c.loss.false_negative_margin
    need(
        fn is None or (math.isfinite(fn) and fn >= 0),
        f"'loss.false_negative_margin' must be a number >= 0 (0.1 in Qwen3-Embedding) or null, got {fn!r}",
    )
    need(c.gradcache.chunk_size >= 1, "'gradcache.chunk_size' must be >= 1")
    longest = max(c.data.query_max_len, c.data.doc_max_len)
    need(
        not c.gradcache.packing or c.gradcache.chunk_tokens >= longest,
        f"'gradcache.chunk_tokens' ({c.gradcache.chunk_tokens}) must be >= the longest sequence "
        f"({longest}, from data.query_max_len/doc_max_len) so that every sequence fits in a chunk",
    )
    need(
        not c.gradcache.packing or c.gradcache.enabled,
        "'gradcache.packing' needs gradcache.enabled=true (packing is how GradCache chunks are formed)",
    )
    need(c.optim.lr > 0, "'optim.lr' must be > 0 (1e-5 in the SFR recipe)")
    need(c.optim.warmup_steps >= 0, "'optim.warmup_steps' must be >= 0")
    need(c.optim.grad_clip >= 0, "'optim.grad_clip' must be >= 0 (0 disables clipping)")
    need(c.optim.epochs >= 1, "'optim.epochs' must be >= 1")
    need(c.optim.max_steps is None or c.optim.max_steps >= 1, "'optim.max_steps' must be >= 1 or null")
    need(len(c.optim.betas) == 2, "'optim.betas' must be a list of two floats, e.g. [0.9, 0.999]")
    need(c.lora.r >= 1, "'lora.r' must be >= 1 (8 in the SFR recipe)")
    need(0 <= c.lora.dropout < 1, "'lora.dropout' must be in [0, 1)")
    need(c.run.save_every >= 1, "'run.save_every' must be >= 1 (steps between checkpoints)")
    need(c.run.keep_checkpoints >= 1, "'run.keep_checkpoints' must be >= 1")
    need(
        c.model.random_init is None or "model_type" in c.model.random_init,
        "'model.random_init' needs a 'model_type' key (e.g. mistral)",
    )
    return p


def _matryoshka_checks(loss: LossConfig) -> list[str]:
    dims, weights = loss.matryoshka_dims, loss.matryoshka_weights
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
        return [f"'loss.matryoshka_dims' must be whole numbers >= 1 (e.g. [4096, 1024, 256]), got {dims!r}"]
    p = []
    if len(set(dims)) != len(dims):
        p.append(f"'loss.matryoshka_dims' lists a dimension twice: {dims!r}")
    if weights and len(weights) != len(dims):
        p.append(
            f"'loss.matryoshka_weights' needs one weight per dimension of loss.matryoshka_dims "
            f"({len(dims)}), got {len(weights)}"
        )
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in weights):
        p.append(f"'loss.matryoshka_weights' must be numbers > 0, got {weights!r}")
    return p


def parse_override(item: str) -> tuple[list[str], object]:
    if "=" not in item:
        raise ConfigError(
            [f"override {item!r} is not of the form key=value (e.g. data.global_batch_size=64)"]
        )
    key, raw = item.split("=", 1)
    if not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError([f"override {item!r}: the key before '=' must be section.field"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"override {item!r}: the value is not valid YAML ({problem})"]) from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"override {item!r}: '{part}' is not a section"])
        node[path[-1]] = value
    return data


def resolve_path(path: str, base_dirs: list[Path]) -> str:
    """Absolute path: as given if it exists, else under the config's folder, else the project root."""
    p = Path(os.path.expanduser(path))
    if p.is_absolute() or p.exists():
        return str(p.resolve())
    for base in base_dirs:
        if (base / p).exists():
            return str((base / p).resolve())
    return str(p.resolve())


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None, *, resolve_files: bool = True
) -> TrainConfig:
    """Load YAML, apply overrides, type-check every field and report all problems at once; with
    ``resolve_files`` also the files it names (training data, the DeepSpeed JSON)."""
    data = {}
    bases = [PROJECT_ROOT]
    if path is not None:
        data = read_yaml(path, "a mapping of sections")
        bases.insert(0, Path(path).resolve().parent)
    data = apply_overrides(data, list(overrides or []))
    problems: list[str] = []
    cfg = build_dataclass(TrainConfig, data, "", problems)
    # fields with a wrong type kept their (valid) defaults, so this reports only real problems
    problems += _semantic_checks(cfg)
    if problems:
        raise ConfigError(problems)
    if resolve_files:
        cfg.data.train_files = [resolve_path(f, bases) for f in cfg.data.train_files]
        cfg.deepspeed.config = resolve_path(cfg.deepspeed.config, bases)
        problems = _file_checks(cfg)
        if problems:
            raise ConfigError(problems)
    return cfg


def _file_checks(cfg: TrainConfig) -> list[str]:
    """The files a config names: training data that exists once each, a valid DeepSpeed JSON."""
    problems = []
    seen = set()
    for f in cfg.data.train_files:
        if f in seen:
            problems.append(f"'data.train_files' lists {f} twice: its records would count double")
        seen.add(f)
        if not os.path.exists(f):
            problems.append(f"'data.train_files': file not found: {f}")
        elif os.path.isdir(f):
            problems.append(f"'data.train_files': {f} is a folder; give JSONL or Parquet files")
    return problems + deepspeed_problems(cfg.deepspeed.config, cfg.model.dtype)


# Fields sfr-ds derives from its own config; a DeepSpeed JSON that sets them would silently disagree.
DEEPSPEED_OWNED = {
    "train_batch_size": "data.global_batch_size",
    "train_micro_batch_size_per_gpu": "data.global_batch_size",
    "gradient_accumulation_steps": "gradcache.chunk_size (GradCache replaces accumulation)",
    "gradient_clipping": "optim.grad_clip",
    "optimizer": "optim.* (a torch AdamW is passed in: no JIT build)",
    "scheduler": "optim.warmup_steps (the SFR recipe's linear warm-up and decay)",
    "fp16": "model.dtype (fp32 or bf16)",
}


def read_deepspeed_json(path: str) -> dict:
    """The DeepSpeed JSON as a dict, or ``ConfigError`` naming the file (and line) of the mistake."""
    import json

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"'deepspeed.config': file not found: {path}"]) from None
    except IsADirectoryError:
        raise ConfigError([f"'deepspeed.config': {path} is a folder; give a DeepSpeed JSON file"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    except json.JSONDecodeError as e:
        raise ConfigError([f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: a DeepSpeed config is a JSON object, got {type(raw).__name__}"])
    return raw


def deepspeed_problems(path: str, dtype: str) -> list[str]:
    """Everything wrong with the DeepSpeed JSON for this config, found before any model is built."""
    try:
        raw = read_deepspeed_json(path)
    except ConfigError as e:
        return e.problems
    owned = [k for k in DEEPSPEED_OWNED if k in raw]
    problems = [f"{path}: remove '{k}'; sfr-ds sets it from {DEEPSPEED_OWNED[k]}" for k in owned]
    zero = raw.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool):
        problems.append(f"{path}: 'zero_optimization.stage' must be 0, 1, 2 or 3, got {stage!r}")
    bf16 = raw.get("bf16", {})
    enabled = bf16.get("enabled", False) if isinstance(bf16, dict) else None
    if not isinstance(enabled, bool):
        problems.append(f"{path}: 'bf16.enabled' must be true or false, got {enabled!r}")
    elif enabled != (dtype == "bf16"):
        problems.append(
            f"{path}: bf16.enabled={enabled} but model.dtype={dtype!r}; pick a matching DeepSpeed "
            "config (e.g. ds_configs/zero2_bf16.json for bf16, ds_configs/zero2.json for fp32)"
        )
    return problems


def config_from_dict(data: dict) -> TrainConfig:
    """Rebuild a config from ``run.yaml`` (already resolved and validated when it was written)."""
    problems: list[str] = []
    cfg = build_dataclass(TrainConfig, data, "", problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def dump_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    from .io import atomic_write

    atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
