"""A soup's inputs, read and checked before any weight is: its options, its output folder, and each
input (a run, an adapter folder, or a training checkpoint exported as ``sfr-ds export`` does) against
the first one (same base model, LoRA on the same layers, same encoding settings).

Apart from the soup proper so that every mistake is one ``MergeError`` naming the file and field,
raised before torch or peft is imported (``check_eval_args`` and ``export_checkpoint`` import what
they need on use).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..io import sha256_files
from ..merge import MergeError
from ..model_files import check_json, check_model_folder
from ..run_dir import (
    ADAPTER_CONFIG,
    COMPLETE,
    META,
    RunDir,
    RunDirError,
    base_model_path,
    content_digest,
    model_folder,
)

METHODS = ("linear", "slerp")
# what every input's sfr_ds.json must share with the first: how the soup encodes
SAME_META = ("pooling", "normalize", "append_eos", "query_max_len", "doc_max_len")
# what every input's adapter_config.json must share with the first: where the LoRA layers are
SAME_LORA = ("peft_type", "target_modules", "fan_in_fan_out", "bias", "layers_to_transform", "layers_pattern")


@dataclass
class SoupInput:
    given: Path  # as named by the user, absolute: a run, an adapter folder or a checkpoint
    adapter: Path  # the adapter folder (a checkpoint's export)
    meta: dict

    @cached_property
    def digest(self) -> str:
        return content_digest(self.adapter)


# ----------------------------------------------------------------------------- options and output


def check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """One weight > 0 per input, divided by their sum; None: uniform."""
    if weights is None:
        return [1 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise MergeError(f"--weights: {len(weights)} weight(s) for {n} input(s); give one weight per input")
    if bad := [w for w in weights if not (w > 0 and math.isfinite(w))]:
        raise MergeError(f"--weights: every weight must be a number > 0, got {bad[0]:g}")
    total = sum(weights)
    return [w / total for w in weights]


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeError(
            f"{out} exists and is not empty; choose another --out or remove it (nothing was written)"
        )


def check_method(method: str, n: int, weights, t, eval_args) -> None:
    if method not in METHODS:
        raise MergeError(f"--method: unknown method {method!r}; known: {', '.join(METHODS)}")
    if n < 1:
        raise MergeError("no inputs; name the runs, adapter folders or checkpoints to soup")
    if method == "slerp":
        if n != 2:
            raise MergeError(f"--method slerp interpolates exactly two inputs, got {n}; use --method linear")
        if weights is not None:
            raise MergeError("--weights is for --method linear; slerp takes --t")
        if eval_args:
            raise MergeError("--select-by chooses among linear soups; drop it or use --method linear")
        if t is None or not 0 <= t <= 1:
            raise MergeError(f"--t: the slerp factor must be in [0, 1], got {t}")
    elif t is not None:
        raise MergeError("--t is for --method slerp; linear takes --weights")


def check_eval_args(eval_args: Sequence[str]) -> None:
    """A named suite must exist (and find its data) before anything is evaluated."""
    from ..eval.suite import suite_specs

    args = list(eval_args)
    if "--suite" in args and args.index("--suite") + 1 < len(args):
        root = args[args.index("--data-root") + 1] if "--data-root" in args[:-1] else None
        try:
            suite_specs(args[args.index("--suite") + 1], root)
        except ValueError as e:
            raise MergeError(f"--select-by: {e}") from None


def check_not_inside(out: Path, given: list[Path]) -> None:
    """An output inside an input would change that input (and its content digest) under the soup."""
    for path in given:
        if path.resolve() == out.resolve() or path.resolve() in out.resolve().parents:
            raise MergeError(
                f"{out}: lies inside the input {path}; choose another --out (nothing was written)"
            )


# ----------------------------------------------------------------------------- the inputs


def is_checkpoint(path: Path) -> bool:
    """A training checkpoint (or a run or checkpoints folder that has one) rather than a model folder."""
    return (path / COMPLETE).is_file() or path.name == "checkpoints" or (path / "checkpoints").is_dir()


def read_input(path: Path) -> SoupInput | None:
    """The model folder ``path`` names, checked readable; None for a checkpoint (exported later)."""
    folder = model_folder(path)
    if folder is None:
        if is_checkpoint(path):
            return None
        raise MergeError(
            f"{path}: not an sfr-ds run, adapter folder or checkpoint (no {META}, no {COMPLETE})"
        )
    try:
        meta = check_model_folder(folder)
    except RunDirError as e:
        raise MergeError(str(e)) from None
    if meta.get("merged"):
        source = f" ({meta['source_adapter']})" if meta.get("source_adapter") else ""
        raise MergeError(
            f"{folder / META}: a merged model (full weights); a soup reads LoRA adapters: give the "
            f"adapter it was merged from{source}"
        )
    if not meta.get("lora", True):
        raise MergeError(
            f"{folder / META}: lora: false (full weights, no adapter); a soup reads LoRA adapters"
        )
    return SoupInput(path, folder, meta)


def export_checkpoint(path: Path, into: Path) -> SoupInput:
    """A checkpoint as an adapter folder in ``into`` (named by the checkpoint's path, so a rerun of a
    selection finds it again), as ``sfr-ds export`` writes it."""
    from ..export import ExportError, export

    out = into / hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    if not (out / META).is_file():
        shutil.rmtree(out, ignore_errors=True)
        try:
            export(path, out)
        except ExportError as e:
            raise MergeError(str(e)) from None
    return SoupInput(path, out, read_input(out).meta)


def base_identity(inp: SoupInput) -> tuple[str, str]:
    """(what to show, what to compare): a random-init base by its weights, another by its path or name."""
    try:
        base = base_model_path(inp.adapter, inp.meta)
    except RunDirError as e:
        raise MergeError(str(e)) from None
    if inp.meta.get("random_init"):
        return base, "random-init:" + sha256_files(p for p in Path(base).iterdir() if p.is_file())
    local = Path(base).expanduser()
    return base, str(local.resolve()) if local.is_dir() else base


def lora_config(inp: SoupInput) -> dict:
    config = check_json(inp.adapter / ADAPTER_CONFIG)
    if not isinstance(config, dict):
        raise MergeError(f"{inp.adapter / ADAPTER_CONFIG}: expected a JSON object")
    return config


def comparable(value):
    return sorted(value) if isinstance(value, list) else value


def check_compatible(inputs: Sequence[SoupInput]) -> None:
    """Every input over the first one's base, with LoRA on the same layers, encoding the same way."""
    first, first_base = inputs[0], base_identity(inputs[0])
    first_lora = lora_config(first)
    for inp in inputs[1:]:
        for key in SAME_META:
            if inp.meta.get(key) != first.meta.get(key):
                raise MergeError(
                    f"{inp.adapter / META}: {key} {inp.meta.get(key)!r} differs from "
                    f"{first.meta.get(key)!r} in {first.adapter / META}; a soup encodes one way"
                )
        shown, base = base_identity(inp)
        if base != first_base[1]:
            what = (
                "random-init base model (other weights: another seed?)"
                if inp.meta.get("random_init")
                else "base_model"
            )
            raise MergeError(
                f"{inp.adapter / META}: {what} {shown!r} differs from {first_base[0]!r} of "
                f"{first.adapter / META}; a soup needs adapters of one base model"
            )
        config = lora_config(inp)
        for key in SAME_LORA:
            if comparable(config.get(key)) != comparable(first_lora.get(key)):
                mine, theirs = comparable(config.get(key)), comparable(first_lora.get(key))
                raise MergeError(
                    f"{inp.adapter / ADAPTER_CONFIG}: {key} {mine!r} differs from {theirs!r} in "
                    f"{first.adapter / ADAPTER_CONFIG}; a soup needs LoRA on the same layers"
                )


def last_checkpoints(inputs: Sequence[str | os.PathLike], k: int) -> list[Path]:
    """``--last K``: the K newest complete checkpoints of the one run given (its final step's among
    them: training saves one at its last step), oldest first."""
    if len(inputs) != 1:
        raise MergeError(f"--last {k} takes one run directory, got {len(inputs)} inputs")
    run = RunDir(Path(inputs[0]).expanduser().absolute())
    tags = run.complete_tags()
    if k < 2 or len(tags) < k:
        raise MergeError(
            f"--last {k}: {run.root} has {len(tags)} complete checkpoint(s) in {run.checkpoints}; a soup "
            f"of its last {k} needs at least {max(k, 2)} (train with run.keep_checkpoints >= {max(k, 2)})"
        )
    return [run.checkpoint(tag) for tag in tags[-k:]]


def resolve_inputs(paths: Sequence[str | os.PathLike], exports: Path) -> list[SoupInput]:
    """Model folders checked at once; checkpoints then exported into ``exports`` and checked too."""
    given = [Path(p).expanduser().absolute() for p in paths]
    found = [read_input(p) for p in given]
    if ready := [f for f in found if f is not None]:
        check_compatible(ready)
    if any(f is None for f in found):
        exports.mkdir(parents=True, exist_ok=True)
        found = [f if f is not None else export_checkpoint(p, exports) for f, p in zip(found, given)]
        check_compatible(found)
    return found
