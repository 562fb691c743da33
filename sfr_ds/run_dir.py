"""The run folder and the model folders it hands out: the one module that knows their layout.

A run directory::

    run.yaml                 the resolved training config
    metrics.jsonl            one JSON object per step
    tensorboard/             the same, as TensorBoard events
    checkpoints/step-N/      DeepSpeed shards + rng_rankR.pt + complete.json (written last)
    checkpoints/latest       the newest complete tag, moved atomically after every rank wrote
    final/                   the PEFT adapter, tokenizer and sfr_ds.json (a "model folder")
    base_model/              a random-init backbone's weights (they exist nowhere else)

A model folder is any folder with ``sfr_ds.json`` (``META``): a run's ``final/``, an exported
checkpoint (``sfr-ds export``), or a merged model (``sfr-ds merge``, ``"merged": true``). The
metadata says how to encode as training did, and where the base weights are; paths in it are
relative to the folder, so a run directory can be moved or copied and still be used.

``content_digest`` is the one answer to "did this model change?" (mining's and evaluation's
caches, merge's "already merged" check): a hash of what the folder holds, not of file times.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import atomic_write_json, new_folder, sha256_files, sha256_text

META = "sfr_ds.json"
ADAPTER_CONFIG = "adapter_config.json"
TAG_PREFIX = "step-"
COMPLETE = "complete.json"


class RunDirError(ValueError):
    """A folder that is not what a command needs; the message names it and the fix."""


class RunDir:
    """One run directory; its paths are the layout above."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config_file = self.root / "run.yaml"
        self.metrics_file = self.root / "metrics.jsonl"
        self.tensorboard = self.root / "tensorboard"
        self.checkpoints = self.root / "checkpoints"
        self.latest_file = self.checkpoints / "latest"
        self.final = self.root / "final"
        self.base_model = self.root / "base_model"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDir) and self.root == other.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @staticmethod
    def tag(step: int) -> str:
        return f"{TAG_PREFIX}{step:08d}"

    def checkpoint(self, tag: str) -> Path:
        return self.checkpoints / tag

    def complete_tags(self) -> list[str]:
        """Tags of every checkpoint whose ranks all finished writing, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p.name for p in self.checkpoints.glob(f"{TAG_PREFIX}*") if (p / COMPLETE).exists())

    def latest_tag(self) -> str | None:
        """The tag ``latest`` names, or None when there is no checkpoint; a pointer to an incomplete
        checkpoint is an error naming it (``latest`` only ever moves to complete ones)."""
        if not self.latest_file.exists():
            return None
        tag = self.latest_file.read_text().strip()
        if not (self.checkpoint(tag) / COMPLETE).exists():
            raise RunDirError(
                f"{self.latest_file} names {tag!r}, which is missing or has no {COMPLETE}; "
                "the checkpoint is broken"
            )
        return tag

    def finished(self) -> bool:
        return (self.final / META).exists()

    def has_state(self) -> bool:
        """Anything a training run leaves (metrics, checkpoints, the final adapter)."""
        return self.metrics_file.exists() or self.checkpoints.exists() or self.final.exists()


@dataclass(frozen=True)
class Start:
    """How a training run begins in its folder."""

    tag: str | None = None  # the checkpoint to resume from; None: from step 0
    finished: bool = False  # the run already wrote final/: nothing to do
    note: str | None = None  # what to tell the user about this choice


def plan_start(run: RunDir, resume: bool, save_every: int) -> Start:
    """Resume, start, or leave alone; refuse whatever would overwrite a user's results.

    A finished run is never trained again (with ``--resume``, as a requeued finished Slurm job
    does, it is a no-op). Without ``--resume`` a folder that holds any run state is refused. With
    it, the newest complete checkpoint is taken; with none, training starts over only if no
    checkpoint can ever have been complete (the run stopped before or during its first save):
    steps are deterministic, so nothing is lost.
    """
    if run.finished():
        if resume:
            return Start(finished=True, note=f"{run.root} is finished ({run.final}); nothing to do")
        raise RunDirError(f"{run.root} holds a finished run ({run.final}); choose another --output-dir")
    if not resume:
        if run.has_state():
            raise RunDirError(
                f"{run.root} already holds a run ({_state_of(run)}); pass --resume to continue it "
                "or choose another --output-dir"
            )
        return Start()
    try:
        tag = run.latest_tag()
    except RunDirError as e:  # the pointer names a checkpoint that is gone or half written
        complete = run.complete_tags()
        if not complete:
            raise
        return Start(complete[-1], note=f"WARNING {e}; resuming from the newest complete one, {complete[-1]}")
    if tag is not None:
        return Start(tag)
    # A step after the first save is only ever logged once that save completed (the loop waits for
    # it), so metrics beyond it, or a final folder, mean checkpoints existed and are gone.
    if run.final.exists() or last_logged_step(run) > save_every:
        raise RunDirError(
            f"{run.root} holds {_state_of(run)} but no complete checkpoint to resume from; training "
            "again would overwrite it. Choose another --output-dir, or remove the folder to start over"
        )
    return Start(note=f"--resume: no complete checkpoint in {run.root} yet; starting from step 1")


def _state_of(run: RunDir) -> str:
    parts = [
        p.name + ("/" if p.is_dir() else "")
        for p in (run.metrics_file, run.checkpoints, run.final)
        if p.exists()
    ]
    return ", ".join(parts)


def last_logged_step(run: RunDir) -> int:
    """The highest step in metrics.jsonl (0 if none); a line cut short by a kill is ignored."""
    import json

    last = 0
    if run.metrics_file.exists():
        for line in run.metrics_file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                last = max(last, int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue
    return last


def config_changes(saved: dict, given: dict, prefix: str = "") -> list[str]:
    """Dotted fields that differ between two config dicts (``run.output_dir`` never counts: a run
    folder may be moved or copied and resumed where it now lies)."""
    out = []
    for k in sorted(set(saved) | set(given)):
        a, b = saved.get(k), given.get(k)
        if f"{prefix}{k}" == "run.output_dir":
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} ({a!r} -> {b!r})")
    return out


# ----------------------------------------------------------------------------- model folders


def model_folder(path: str | os.PathLike) -> Path | None:
    """The folder holding ``sfr_ds.json`` for a run directory or a model folder, else None."""
    path = Path(path)
    for folder in (path, RunDir(path).final):
        if (folder / META).is_file():
            return folder
    return None


def find_model_folder(path: str | os.PathLike) -> Path:
    folder = model_folder(path)
    if folder is None:
        raise RunDirError(f"{path}: no {META} (not an sfr-ds run, adapter or merged model folder)")
    return folder


def is_adapter(folder: Path) -> bool:
    """A model folder with LoRA weights to apply on its base (not a merged model)."""
    return (folder / ADAPTER_CONFIG).exists() and not read_meta(folder).get("merged", False)


def read_meta(folder: Path) -> dict[str, Any]:
    import json

    path = Path(folder) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: cannot be read ({e}); the folder is incomplete") from None
    if not isinstance(meta, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    return meta


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    atomic_write_json(Path(folder) / META, meta)


def encode_meta(cfg, base_dir: str | None) -> dict[str, Any]:
    """``sfr_ds.json`` of an adapter: how to encode as training did (``cfg`` is the run's
    TrainConfig; ``base_dir`` locates a random-init base, relative to the folder). A Matryoshka
    run also records the widths it trained."""
    matryoshka = {"matryoshka_dims": cfg.loss.matryoshka_dims} if cfg.loss.matryoshka_dims else {}
    return {
        "base_model": cfg.model.name_or_path,
        "random_init": cfg.model.random_init,
        "base_model_dir": base_dir,
        "pooling": cfg.model.pooling,
        "normalize": cfg.model.normalize,
        "append_eos": cfg.model.appends_eos,
        "query_max_len": cfg.data.query_max_len,
        "doc_max_len": cfg.data.doc_max_len,
        "dtype": cfg.model.dtype,
        "lora": cfg.lora.enabled,
        **matryoshka,
    }


def write_model_folder(out: Path, model, state_dict, tokenizer, meta: dict[str, Any]) -> Path:
    """``model.save_pretrained`` (a PEFT model writes its adapter; ``state_dict`` None: its own
    weights), the tokenizer and ``sfr_ds.json``, built aside and renamed into place at once: a
    kill leaves no folder, never new weights beside old metadata. ``out`` must not hold files."""
    with new_folder(out) as part:
        model.save_pretrained(str(part), state_dict=state_dict)
        tokenizer.save_pretrained(str(part))
        write_meta(part, meta)
    return Path(out)


def base_dir_for(folder: Path, run: RunDir) -> str:
    """``base_model_dir`` of a model folder whose base is ``run``'s random-init copy (relative)."""
    return os.path.relpath(run.base_model.resolve(), Path(folder).resolve())


def base_model_path(folder: Path, meta: dict[str, Any]) -> str:
    """The base weights an adapter applies to: a random-init run's own copy, else the model name."""
    if meta.get("random_init"):
        path = (Path(folder) / meta["base_model_dir"]).resolve()
        if not path.is_dir():
            raise RunDirError(
                f"{folder / META}: its random-init base model {path} is gone; it exists nowhere else, "
                "so this adapter cannot be used (restore the run's base_model/ folder)"
            )
        return str(path)
    return meta["base_model"]


def content_digest(folder: str | os.PathLike) -> str:
    """Hash of everything that shapes a model folder's embeddings: its own files (adapter,
    tokenizer, metadata) and a random-init base. A merged model's weight shards are left out:
    its metadata already names the adapter digest, base and dtype they were made from, and a 7B
    model's 14 GB would be read on every use."""
    folder = Path(folder)
    meta = read_meta(folder)
    files = [p for p in folder.iterdir() if p.is_file()]
    if meta.get("merged"):
        files = [p for p in files if not p.name.startswith("model") or not p.name.endswith(".safetensors")]
    digest = sha256_files(files)
    if meta.get("random_init"):
        base = Path(base_model_path(folder, meta))
        digest = sha256_text(digest + sha256_files(p for p in base.iterdir() if p.is_file()))
    return digest


# ----------------------------------------------------------------------------- checkpoints


def locate_checkpoint(path: str | os.PathLike) -> tuple[RunDir, Path]:
    """(run, tag dir) for a run dir or its checkpoints dir (both: the latest) or one tag dir."""
    path = Path(path).resolve()
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if path.name == "checkpoints":
        tag = RunDir(path.parent).latest_tag()
        if tag is None:
            raise RunDirError(f"{path}: no complete checkpoint (no 'latest' pointer)")
        path = path / tag
    if not (path / COMPLETE).exists():
        raise RunDirError(
            f"{path}: not a complete sfr-ds checkpoint (no {COMPLETE}); give "
            "<run>/checkpoints/step-NNNNNNNN, <run>/checkpoints or <run>"
        )
    run = RunDir(path.parent.parent)
    if not run.config_file.exists():
        raise RunDirError(f"{run.root}: no run.yaml next to the checkpoints")
    return run, path
