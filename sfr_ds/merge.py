"""LoRA folded into full weights, checked on probe texts, laid out for transformers and sentence-transformers.

Memory. The base model is never loaded whole: its safetensors files are read one tensor at a time,
merged tensors are collected into output shards of at most ``max_shard_size`` bytes and each shard
is written as soon as it is full. Each input tensor is copied out of its file, which is mapped only
meanwhile. The peak is about one output shard plus one tensor, so a 7B model merges in a few GB
instead of two copies of it (docs/benchmarks.md).

Exact to peft. Each LoRA-targeted weight is upcast to fp32 and placed, under its own name, in a
skeleton module that holds only that layer (an ``nn.Linear``, or transformers' ``Conv1D`` when the
adapter says ``fan_in_fan_out``). peft then does everything itself: ``PeftModel`` wraps the layer
from the adapter's own ``LoraConfig`` (r, lora_alpha and their per-module patterns, rslora,
fan_in_fan_out), ``set_peft_model_state_dict`` loads the adapter tensors read by
``load_peft_weights``, and ``merge_and_unload`` folds them in: the code that
``PeftModel.merge_and_unload`` runs on the whole model, one layer at a time, in fp32, rounded once
to the output dtype. tests/test_merge_export.py checks bit equality with peft's whole-model merge.

Serving. The output holds safetensors shards, config.json, the tokenizer (made to append EOS itself
when the model pools the last token, so plain transformers and sentence-transformers see the EOS
that training appended by hand), and a sentence-transformers layout: Transformer with per-task
query/document lengths, pooling, Normalize, and the query prompt ``Instruct: ...\\nQuery: ``.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .data.tokens import format_query
from .encode import META, TextEncoder
from .model import DTYPES, Embedder, load_tokenizer
from .zoo import resolve_model_path

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
DEFAULT_MAX_SHARD_SIZE = "2GB"
# Max |merged - (base + adapter)| over unit embeddings of the probe texts, both run in the output
# dtype. fp32 differs by summation order only (tiny model: 6e-8). bf16 rounds weights and activations
# to 8 mantissa bits: on SmolLM2-135M (30 layers) base + adapter in bf16 is already 2.1e-2 from
# itself in fp32, and the merged model 2.4e-2 from base + adapter (docs/benchmarks.md).
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}
PEFT_PREFIX = "base_model.model."
PROBE_QUERIES = [
    "how do vaccines train the immune system",
    "capital of australia",
    "symptoms of iron deficiency in adults",
    "what is the boiling point of water at altitude",
]
PROBE_DOCS = [
    "Canberra is the capital city of Australia.",
    "Vaccines expose the immune system to a harmless form of a pathogen so that it learns to recognise it.",
    "Fatigue, pale skin and shortness of breath are common signs of anaemia.",
    "Water boils at a lower temperature at high altitude because the air pressure is lower.",
]


class MergeError(RuntimeError):
    """A merge that cannot be done or does not verify; the message names the fix."""


@dataclass
class MergeReport:
    merged: bool  # False: the input or the output was already a merged model, left alone
    max_abs_diff: float | None = None
    tolerance: float | None = None
    message: str = ""


# ----------------------------------------------------------------------------- locating inputs


def read_meta(folder: Path) -> dict | None:
    path = folder / META
    return json.loads(path.read_text()) if path.exists() else None


def find_adapter(path: str | Path) -> Path:
    """A run directory or its ``final`` folder -> the folder holding the adapter and sfr_ds.json."""
    folder = Path(path)
    if read_meta(folder) is None and read_meta(folder / "final") is not None:
        folder = folder / "final"
    if read_meta(folder) is None:
        raise MergeError(f"{path}: no {META} (not an sfr-ds run, adapter or merged model folder)")
    return folder


def base_model_dir(adapter: Path, meta: dict) -> Path:
    """The base weights named by the run's metadata: a random-init run keeps its own copy."""
    if meta.get("random_init"):
        return (adapter / meta["base_model_dir"]).resolve()
    return Path(resolve_model_path(meta["base_model"]))


def weight_files(base: Path) -> list[Path]:
    index = base / "model.safetensors.index.json"
    if index.exists():
        names = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        return [base / n for n in names]
    if (base / "model.safetensors").exists():
        return [base / "model.safetensors"]
    raise MergeError(
        f"{base}: no model.safetensors or model.safetensors.index.json; merge reads "
        "safetensors only (re-save the base with save_pretrained(..., safe_serialization=True))"
    )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- the adapter, via peft

UNSUPPORTED = {
    "use_dora": "DoRA",
    "modules_to_save": "modules_to_save",
    "lora_bias": "lora_bias",
    "trainable_token_indices": "trainable tokens",
    "target_parameters": "target_parameters",
}


def read_adapter(adapter: Path):
    """(peft LoraConfig, {module name: that module's adapter tensors under their saved keys})."""
    from peft import PeftConfig
    from peft.utils import load_peft_weights

    config = PeftConfig.from_pretrained(str(adapter))
    if config.peft_type != "LORA":
        raise MergeError(f"{adapter}: a {config.peft_type} adapter; sfr-ds merge folds LoRA only")
    used = [label for field, label in UNSUPPORTED.items() if getattr(config, field, None)]
    if used:
        raise MergeError(
            f"{adapter}: the adapter uses {', '.join(used)}, which the shard-wise merge does "
            "not fold; merge it with PeftModel.merge_and_unload() instead"
        )
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_peft_weights(str(adapter), device="cpu").items():
        module, sep, part = key.removeprefix(PEFT_PREFIX).partition(".lora_")
        if not sep or part not in ("A.weight", "B.weight"):
            raise MergeError(
                f"{adapter}: adapter tensor {key!r} is not a LoRA A/B weight of a linear "
                "layer; merge it with PeftModel.merge_and_unload() instead"
            )
        groups.setdefault(module, {})[key] = tensor
    return config, groups


def base_prefix(base: Path) -> str:
    """The prefix a task-head checkpoint puts before the backbone's names ('model' for Llama)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = AutoConfig.from_pretrained(str(base))
    cls = MODEL_MAPPING.get(type(config), None)
    return getattr(cls, "base_model_prefix", "") if cls is not None else ""


def lora_module(key: str, modules: dict, prefix: str) -> str | None:
    """The adapter module whose weight ``key`` is, with or without the checkpoint's backbone prefix."""
    if not key.endswith(".weight"):
        return None
    name = key.removesuffix(".weight")
    if name in modules:
        return name
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in modules:
        return name[len(prefix) + 1 :]
    return None


def skeleton(name: str, weight: torch.Tensor, fan_in_fan_out: bool) -> nn.Module:
    """A module tree holding one layer at ``name``, so peft matches it exactly as in the full model."""
    root = parent = nn.Module()
    *path, leaf = name.split(".")
    for part in path:
        child = nn.Module()
        parent.add_module(part, child)
        parent = child
    if fan_in_fan_out:  # GPT-2 style Conv1D keeps weights as [in, out]
        from transformers.pytorch_utils import Conv1D

        layer = Conv1D(nf=weight.shape[1], nx=weight.shape[0]).to("meta")
    else:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    parent.add_module(leaf, layer)
    return root


def merge_layer(name: str, weight: torch.Tensor, config, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """W + delta for one layer, computed by peft's own merge in fp32."""
    from peft import PeftModel, set_peft_model_state_dict

    layer_config = copy.deepcopy(config)
    layer_config.target_modules = [name]
    layer_config.inference_mode = True
    with warnings.catch_warnings():  # the patterns of the other layers match nothing here, as they should
        warnings.filterwarnings("ignore", message="The following (rank|alpha)_pattern keys did not match")
        model = PeftModel(skeleton(name, weight.float(), config.fan_in_fan_out), layer_config)
    loaded = set_peft_model_state_dict(model, tensors)
    missing = [k for k in loaded.missing_keys if ".lora_" in k]
    if missing or loaded.unexpected_keys:
        raise MergeError(
            f"peft did not load the adapter for {name}: missing {missing}, "
            f"unexpected {loaded.unexpected_keys}"
        )
    return model.merge_and_unload().get_submodule(name).weight.detach()


# ----------------------------------------------------------------------------- shard-wise weights


class ShardWriter:
    """Collects tensors into shards of at most ``max_bytes`` and writes each as soon as it is full."""

    def __init__(self, out: Path, max_bytes: int):
        self.out, self.max_bytes = out, max_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffered = 0  # bytes in buffer
        self.files: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffered + size > self.max_bytes:
            self.flush()
        self.buffer[key] = tensor.contiguous()
        self.buffered += size
        self.total += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        path = self.out / f"shard-{len(self.files):05d}.tmp"
        save_file(self.buffer, str(path), metadata={"format": "pt"})
        self.files.append((path, list(self.buffer)))
        self.buffer, self.buffered = {}, 0

    def close(self) -> list[str]:
        """Name the shards as transformers does and write the index when there is more than one."""
        if self.buffer:
            self.flush()
        n = len(self.files)
        names = (
            ["model.safetensors"]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        weight_map = {}
        for (path, keys), name in zip(self.files, names):
            path.rename(self.out / name)
            weight_map.update(dict.fromkeys(keys, name))
        if n > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
            (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return names


def read_tensor(path: Path, key: str) -> torch.Tensor:
    """One tensor, its file mapped only while it is copied out: a file left open keeps every page
    read so far resident in this process (a whole 10 GB shard by its end)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key)


def merge_weights(
    adapter: Path, base: Path, out: Path, dtype: str, max_shard_size: str = DEFAULT_MAX_SHARD_SIZE
) -> list[str]:
    """Base shards + LoRA -> merged safetensors shards in ``out``; returns the file names."""
    from safetensors import safe_open
    from transformers.utils.hub import convert_file_size_to_int

    config, groups = read_adapter(adapter)
    prefix = base_prefix(base)
    writer = ShardWriter(out, convert_file_size_to_int(max_shard_size))
    done: set[str] = set()
    wrapped = False  # a base saved with LoRA layers in it (*.base_layer.weight) cannot be merged into
    for path in weight_files(base):
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
        for key in keys:
            wrapped |= key.endswith(".base_layer.weight")
            tensor = read_tensor(path, key)
            module = lora_module(key, groups, prefix)
            if module is not None:
                tensor = merge_layer(module, tensor, config, groups[module])
                done.add(module)
            if tensor.is_floating_point():
                tensor = tensor.to(DTYPES[dtype])
            writer.add(key, tensor)
    missing = sorted(set(groups) - done)
    if missing:
        raise MergeError(
            f"{len(missing)} adapter layers have no weight in {base}, e.g. {missing[:3]}; "
            + (
                "its layers are saved PEFT-wrapped (*.base_layer.weight): re-save the base without LoRA"
                if wrapped
                else "is it the base model this adapter was trained on?"
            )
        )
    return writer.close()


# ----------------------------------------------------------------------------- config, tokenizer, ST


def write_config(base: Path, out: Path, dtype: str) -> int:
    """config.json (and generation_config.json) of the base with the output dtype; returns hidden size."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(base))
    config.dtype = DTYPES[dtype]
    config.save_pretrained(str(out))
    if (base / "generation_config.json").exists():
        shutil.copy(base / "generation_config.json", out / "generation_config.json")
    return config.get_text_config().hidden_size


def write_tokenizer(adapter: Path, out: Path, meta: dict) -> None:
    """The run's tokenizer; with last-token pooling its post-processor appends EOS after truncation,
    which reproduces sfr-ds's hand-appended EOS for every consumer of the folder."""
    from tokenizers import processors

    tok = load_tokenizer(ModelConfig(name_or_path=str(adapter)))
    if meta["append_eos"]:
        eos = processors.TemplateProcessing(
            single=f"$A {tok.eos_token}",
            pair=f"$A $B {tok.eos_token}",
            special_tokens=[(tok.eos_token, tok.eos_token_id)],
        )
        current = tok.backend_tokenizer.post_processor
        tok.backend_tokenizer.post_processor = processors.Sequence([current, eos]) if current else eos
    tok.model_max_length = meta["doc_max_len"]
    tok.save_pretrained(str(out))


ST_POOLING = {"last": "lasttoken", "mean": "mean", "cls": "cls"}


def write_sentence_transformers(out: Path, meta: dict, hidden_size: int, instruction: str) -> None:
    """modules.json and module configs as sentence-transformers 6.2 saves them (tested by loading)."""
    st = "sentence_transformers."
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": st + "base.modules.transformer.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": st + "sentence_transformer.modules.pooling.Pooling",
        },
    ]
    if meta["normalize"]:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": st + "base.modules.normalize.Normalize"}
        )
        _write_json(
            out / "2_Normalize" / "config.json",
            {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},
        )
    _write_json(out / "modules.json", modules)
    _write_json(
        out / "sentence_bert_config.json",
        {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            "module_output_name": "token_embeddings",
            "query_length": meta["query_max_len"],
            "document_length": meta["doc_max_len"],
        },
    )
    # include_prompt must stay true: last-token pooling reads the last position the mask keeps
    _write_json(
        out / "1_Pooling" / "config.json",
        {
            "embedding_dimension": hidden_size,
            "pooling_mode": ST_POOLING[meta["pooling"]],
            "include_prompt": True,
        },
    )
    _write_json(
        out / "config_sentence_transformers.json",
        {
            "model_type": "SentenceTransformer",
            "prompts": {"query": format_query("", instruction), "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if meta["normalize"] else "dot",
            "requirements": {
                "sentence-transformers": {
                    "specifier": ">=6.2",
                    "reason": "per-task query_length/document_length",
                }
            },
        },
    )


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


# ----------------------------------------------------------------------------- verification


def reference_embeddings(adapter: Path, dtype: str, instruction: str) -> torch.Tensor:
    """Probe embeddings of base + adapter, encoded by sfr-ds as in training."""
    encoder = TextEncoder.from_run(adapter, device="cpu", dtype=dtype)
    queries = encoder.encode_queries(PROBE_QUERIES, instruction)
    return torch.cat([torch.from_numpy(queries), torch.from_numpy(encoder.encode_documents(PROBE_DOCS))])


@torch.no_grad()
def merged_embeddings(folder: Path, meta: dict, dtype: str, instruction: str) -> torch.Tensor:
    """Probe embeddings of the merged folder as a plain transformers user gets them: its own
    tokenizer (which appends EOS) with truncation to the run's lengths, AutoModel, the run's pooling."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = Embedder(
        AutoModel.from_pretrained(str(folder), dtype=DTYPES[dtype]), meta["pooling"], meta["normalize"]
    ).eval()
    out = []
    for texts, max_len in (
        ([format_query(q, instruction) for q in PROBE_QUERIES], meta["query_max_len"]),
        (PROBE_DOCS, meta["doc_max_len"]),
    ):
        batch = tok(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
        out.append(model(batch["input_ids"], batch["attention_mask"]))
    return torch.cat(out)


def verify(merged: Path, adapter: Path, dtype: str, instruction: str) -> float:
    """Max |difference| between merged and base + adapter probe embeddings; one model in memory at a time."""
    reference = reference_embeddings(adapter, dtype, instruction)
    gc.collect()
    return float((merged_embeddings(merged, read_meta(adapter), dtype, instruction) - reference).abs().max())


# ----------------------------------------------------------------------------- the command


def adapter_digest(adapter: Path) -> str:
    return file_sha256(adapter / "adapter_model.safetensors")


def nothing_to_do(adapter: Path, meta: dict, out: Path) -> str | None:
    """Why the source or ``out`` is already merged (left alone), else None."""
    if meta.get("merged"):
        return f"{adapter} is already a merged model; left alone"
    if not meta.get("lora", True):
        return f"{adapter} was trained without LoRA: its weights are already full; nothing to merge"
    done = read_meta(out) or {}
    if done.get("merged") and done.get("adapter_sha256") == adapter_digest(adapter):
        return f"{out} already holds this adapter merged; left alone"
    return None


def build(adapter: Path, meta: dict, partial: Path, dtype: str, max_shard_size: str, instruction: str) -> int:
    """Weights, config, tokenizer and ST layout into ``partial`` (removed if any of it fails); #shards."""
    base = base_model_dir(adapter, meta)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        files = merge_weights(adapter, base, partial, dtype, max_shard_size)
        hidden = write_config(base, partial, dtype)
        write_tokenizer(adapter, partial, meta)
        write_sentence_transformers(partial, meta, hidden, instruction)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return len(files)


def merge(
    source: str | Path,
    out: str | Path,
    dtype: str | None = None,
    max_shard_size: str = DEFAULT_MAX_SHARD_SIZE,
    instruction: str | None = None,
    check: bool = True,
    tolerance: float | None = None,
) -> MergeReport:
    """Merge a run's (or adapter folder's) LoRA into full weights in ``out``, verified on probe texts.

    Built in a sibling ``.partial`` folder, renamed into place only once verified. A source that is
    already merged, or an ``out`` that already holds this adapter's merge, is left alone.
    """
    out, adapter = Path(out), find_adapter(source)
    meta = read_meta(adapter)
    reason = nothing_to_do(adapter, meta, out)
    if reason:
        return MergeReport(False, message=reason)
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"{out} exists and is not this adapter's merge; choose another --out or remove it")

    dtype, instruction = dtype or meta["dtype"], instruction or DEFAULT_INSTRUCTION
    partial = out.with_name(out.name + ".partial")
    shards = build(adapter, meta, partial, dtype, max_shard_size, instruction)
    report = MergeReport(True, message=f"merged {adapter} into {out} ({shards} shard(s), {dtype})")
    if check:
        report.max_abs_diff = verify(partial, adapter, dtype, instruction)
        report.tolerance = TOLERANCE[dtype] if tolerance is None else tolerance
        if report.max_abs_diff > report.tolerance:
            raise MergeError(
                f"merged and unmerged embeddings differ by {report.max_abs_diff:.3g} > "
                f"{report.tolerance:g} ({dtype}); the unverified model is in {partial}"
            )
        report.message += (
            f"; probe embeddings agree with base + adapter to {report.max_abs_diff:.3g} "
            f"(tolerance {report.tolerance:g})"
        )
    keep = ("pooling", "normalize", "append_eos", "query_max_len", "doc_max_len")
    _write_json(
        partial / META,
        {
            "merged": True,
            "source_adapter": str(adapter.resolve()),
            "adapter_sha256": adapter_digest(adapter),
            "merged_from_base": str(base_model_dir(adapter, meta)),
            "dtype": dtype,
            **{k: meta[k] for k in keep},
            "query_instruction": instruction,
            "verify": {"max_abs_diff": report.max_abs_diff, "tolerance": report.tolerance},
        },
    )
    if out.exists():
        out.rmdir()
    partial.rename(out)
    return report
