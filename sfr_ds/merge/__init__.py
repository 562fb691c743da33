"""LoRA folded into full weights, checked on probe texts, laid out for transformers and sentence-transformers.

``merge`` (``sfr-ds merge``) puts the parts together; each part stands alone so that other ways of
making full weights from adapters reuse it:

* ``layers``: the adapter read through peft, and one layer merged by peft's own code;
* ``shards``: the base read one tensor at a time, the output written in bounded shards;
* ``layout``: config, tokenizer and the sentence-transformers files beside the weights;
* ``probes``: the probe-text check against base + adapter.

Memory. The base model is never loaded whole: the peak is about one output shard plus one tensor,
not two copies of the model (figures in docs/benchmarks.md).

Exact to peft. Each LoRA-targeted layer is folded by ``PeftModel.merge_and_unload`` itself, with the
adapter's own ``LoraConfig``, in fp32, and rounded once to the output dtype. tests/test_merge_export.py
checks bit equality with peft's whole-model merge.

Serving. The output holds safetensors shards, config.json, a tokenizer that appends EOS itself when
the model pools the last token, and a sentence-transformers layout whose query prompt is the run's
instruction. Its ``sfr_ds.json`` says how it was made: ``source_digest`` is the adapter folder's
``content_digest``, by which a second merge of the same adapter into the same folder is skipped.

Inputs first. Every file of the source and its base is checked readable (``files``) and ``out``
checked free before any of torch, transformers or peft is imported: the parts that need them (and
their constants, e.g. ``TOLERANCE``) are imported on first use, so a mistake is one line at once.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..io import partial_dir
from ..model_files import check_base, check_model_folder
from ..run_dir import (
    META,
    RunDirError,
    base_model_path,
    content_digest,
    find_model_folder,
    read_meta,
    write_meta,
)
from ..zoo import resolve_model_path
from .errors import MergeError

__all__ = ["DEFAULT_INSTRUCTION", "DEFAULT_MAX_SHARD_SIZE", "TOLERANCE", "MergeError", "MergeReport", "merge"]
# the constants of the parts that import torch, by module: loaded on first use (``__getattr__``)
LAZY = {"DEFAULT_INSTRUCTION": "layout", "DEFAULT_MAX_SHARD_SIZE": "shards", "TOLERANCE": "probes"}


def __getattr__(name: str):
    if name in LAZY:
        return getattr(importlib.import_module(f".{LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# what a merged folder keeps of its adapter's sfr_ds.json: how to encode with it
KEEP = ("pooling", "normalize", "append_eos", "query_max_len", "doc_max_len")
OPTIONAL = ("matryoshka_dims",)


@dataclass
class MergeReport:
    merged: bool  # False: the input or the output was already a merged model, left alone
    max_abs_diff: float | None = None
    tolerance: float | None = None
    message: str = ""


def nothing_to_do(adapter: Path, meta: dict, out: Path) -> str | None:
    """Why the source or ``out`` is already merged (left alone), else None."""
    if meta.get("merged"):
        return f"{adapter} is already a merged model; left alone"
    if not meta.get("lora", True):
        return f"{adapter} was trained without LoRA: its weights are already full; nothing to merge"
    done = read_meta(out) if (out / META).is_file() else {}
    if done.get("merged") and done.get("source_digest") == content_digest(adapter):
        return f"{out} already holds this adapter merged; left alone"
    return None


def local_base(adapter: Path, meta: dict) -> str:
    """The base model folder the adapter applies to, its config and weight headers checked; merge
    reads it tensor by tensor, so it must be a folder here (a built-in name is resolved to one)."""
    try:
        base = resolve_model_path(base_model_path(adapter, meta))
    except ValueError as e:  # an unknown built-in name
        raise MergeError(f"{adapter / META}: base_model: {e}") from None
    if not Path(base).is_dir():
        raise MergeError(
            f"{adapter / META}: its base model {base!r} is not a folder here; merge reads the base's "
            "safetensors files (download the base and point base_model at it)"
        )
    check_base(base)
    return base


def build(
    adapter: Path,
    meta: dict,
    base: Path,
    partial: Path,
    dtype: str,
    max_shard_size: str | int,
    instruction: str,
) -> int:
    """Weights, config, tokenizer and ST layout into ``partial`` (removed if any of it fails); #shards."""
    from .layout import write_config, write_sentence_transformers, write_tokenizer
    from .shards import merge_weights

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


def checked_inputs(source: str | Path, out: Path) -> tuple[Path, dict, Path] | str:
    """(adapter folder, its metadata, base folder), every file of them readable and ``out`` free; or
    why there is nothing to do. A damaged folder or an unknown base is one ``MergeError``."""
    try:
        adapter = find_model_folder(source)
        meta = check_model_folder(adapter)
        reason = nothing_to_do(adapter, meta, out)
        if reason:
            return reason
        if out.exists() and any(out.iterdir()):
            raise MergeError(
                f"{out} exists and is not this adapter's merge; choose another --out or remove it"
            )
        return adapter, meta, Path(local_base(adapter, meta))
    except RunDirError as e:  # names the file
        raise MergeError(str(e)) from None


def merge(
    source: str | Path,
    out: str | Path,
    dtype: str | None = None,
    max_shard_size: str | int | None = None,
    instruction: str | None = None,
    check: bool = True,
    tolerance: float | None = None,
) -> MergeReport:
    """Merge a run's (or adapter folder's) LoRA into full weights in ``out``, verified on probe texts.

    Built in a sibling ``.partial`` folder, renamed into place only once verified; a merge that fails
    verification stays there for inspection (``io.new_folder`` would remove it). A source that is
    already merged, or an ``out`` that already holds this adapter's merge, is left alone.
    ``max_shard_size`` None: ``DEFAULT_MAX_SHARD_SIZE``.
    """
    out = Path(out)
    inputs = checked_inputs(source, out)
    if isinstance(inputs, str):
        return MergeReport(False, message=inputs)
    adapter, meta, base = inputs
    from .layout import DEFAULT_INSTRUCTION
    from .probes import TOLERANCE, verify
    from .shards import DEFAULT_MAX_SHARD_SIZE

    dtype, instruction = dtype or meta["dtype"], instruction or DEFAULT_INSTRUCTION
    max_shard_size = max_shard_size or DEFAULT_MAX_SHARD_SIZE
    partial = partial_dir(out)
    shards = build(adapter, meta, base, partial, dtype, max_shard_size, instruction)
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
    write_meta(
        partial,
        {
            "merged": True,
            "source_adapter": str(adapter.resolve()),
            "source_digest": content_digest(adapter),
            "merged_from_base": str(base),
            "dtype": dtype,
            **{k: meta[k] for k in KEEP},
            **{k: meta[k] for k in OPTIONAL if k in meta},
            "query_instruction": instruction,
            "verify": {"max_abs_diff": report.max_abs_diff, "tolerance": report.tolerance},
        },
    )
    if out.exists():
        out.rmdir()
    partial.rename(out)
    return report
