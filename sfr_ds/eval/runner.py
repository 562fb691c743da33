"""One evaluation folder: its manifest, running its tasks, and what each task's state is.

``OUT/eval.json`` (the manifest) names the model, the tasks and any truncated widths (``dims``,
Matryoshka); mteb writes each task's scores to ``OUT/results/<model>/<revision>/<Task>.json`` in
its own format (``<model>-d<dim>`` for the first ``dim`` dimensions, scored from the same cached
embeddings); ``OUT/status/<Task>.json`` says whether a task is submitted, running, done or failed
(with the error). A local run and a Slurm array element run the same ``run_tasks``, so the two
paths cannot drift apart. Only ``run_tasks`` imports torch or mteb: reading a folder's state stays
light for a login node.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_write_json
from .models import ModelSpec, check_model, fingerprint, label, owner
from .readers import Tally, check_data
from .specs import TaskEntry

MANIFEST = "eval.json"


class EvalFolderError(ValueError):
    """A folder that is not (or no longer) a readable evaluation; the message names the file."""


def read_json(path: Path) -> Any:
    """A JSON file of an evaluation folder; one that was edited or cut short is an error naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EvalFolderError(f"{path}: cannot be read ({e})") from None


def default_out(source: str) -> Path:
    """Where ``sfr-ds eval`` writes by default: RUN/eval for a run or its adapter, FOLDER/eval for
    another local model folder, ./eval/LABEL for a hub or builtin name."""
    if Path(source).is_dir():
        return owner(source) / "eval"
    return Path("eval") / label(ModelSpec(source))


def find_eval(arg: str) -> Path:
    """An evaluation folder given directly, or the default one of a model path."""
    for candidate in (Path(arg), default_out(arg)):
        if (candidate / MANIFEST).exists():
            return candidate
    raise EvalFolderError(
        f"{arg}: no evaluation found (neither {arg}/{MANIFEST} nor {default_out(arg)}/{MANIFEST})"
    )


def default_cache_dir() -> Path:
    from ..zoo import cache_dir

    return cache_dir() / "eval-embeddings"


def embedding_cache(spec: ModelSpec, cache_dir: str | None = None):
    """The model's embedding cache: ``CACHE_DIR/<label>-<fingerprint>``; ``spec`` normalized."""
    from .cache import EmbeddingCache

    return EmbeddingCache(Path(cache_dir or default_cache_dir()) / f"{label(spec)}-{fingerprint(spec)}")


@dataclass
class Manifest:
    model: ModelSpec
    label: str
    revision: str
    tasks: list[TaskEntry]
    cache_dir: str
    elements: list[list[int]] = field(default_factory=list)  # Slurm array element -> task indices
    dims: list[int] = field(default_factory=list)  # widths also scored (Matryoshka), widest first

    def mteb_name(self, dim: int | None = None) -> str:
        return f"sfr-ds/{self.label}" + (f"-d{dim}" if dim else "")

    def result_path(self, out: Path, task: str, dim: int | None = None) -> Path:
        """Where mteb's ResultCache(out) writes the task's scores (at the first ``dim`` dimensions)."""
        return out / "results" / self.mteb_name(dim).replace("/", "__") / self.revision / f"{task}.json"

    def index(self, name: str) -> int:
        names = [t.name for t in self.tasks]
        if name not in names:
            raise EvalFolderError(f"no task {name!r} in this evaluation; tasks: {', '.join(names)}")
        return names.index(name)

    def save(self, out: Path) -> None:
        data = {
            "model": self.model.to_json(),
            "label": self.label,
            "revision": self.revision,
            "cache_dir": self.cache_dir,
            "tasks": [t.to_json() for t in self.tasks],
            "elements": self.elements,
            "dims": self.dims,
        }
        atomic_write_json(out / MANIFEST, data)

    @classmethod
    def load(cls, out: Path) -> Manifest:
        path = out / MANIFEST
        if not path.is_file():
            raise EvalFolderError(f"{out} is not an sfr-ds evaluation folder (no {MANIFEST})")
        data = read_json(path)
        try:
            return cls(
                ModelSpec.from_json(data["model"]),
                data["label"],
                data["revision"],
                [TaskEntry(**t) for t in data["tasks"]],
                data["cache_dir"],
                data["elements"],
                [int(d) for d in data.get("dims", [])],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EvalFolderError(f"{path}: not an sfr-ds manifest ({type(e).__name__}: {e})") from None


def prepare(
    out: Path,
    spec: ModelSpec,
    entries: list[TaskEntry],
    cache_dir: str | None = None,
    read_all: bool = True,
    dims: list[int] | None = None,
) -> Manifest:
    """Create or extend the folder's manifest; the folder belongs to one model. The model and every
    local task's data are checked first (``read_all=False``: each file's first row only, for a
    Slurm submit), so a user's mistake stops here, before the folder exists. ``dims`` add widths
    at which every task is also scored."""
    spec = spec.normalized()
    names = [e.name for e in entries]
    if dups := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"two specs name the same task {dups}; give one a different ?name=")
    check_model(spec.source)
    for entry in entries:
        tally = check_data(entry.spec, head=not read_all)
        entry.data = tally.to_json() if tally is not None else None
    _check_out(out)
    manifest = Manifest(
        spec, label(spec), fingerprint(spec), [], str(Path(cache_dir or default_cache_dir()).resolve())
    )
    if (out / MANIFEST).exists():
        old = Manifest.load(out)
        if not _same_model(old, manifest):
            raise ValueError(
                f"{out} holds an evaluation of {old.model.source} with other settings "
                f"({old.model}); choose another --output-dir"
            )
        manifest.tasks, manifest.elements, manifest.dims = old.tasks, old.elements, old.dims
    manifest.dims = sorted({*manifest.dims, *(dims or [])}, reverse=True)
    known = {t.name: i for i, t in enumerate(manifest.tasks)}
    for entry in entries:
        if entry.name in known:
            manifest.tasks[known[entry.name]] = entry
        else:
            manifest.tasks.append(entry)
    manifest.save(out)
    return manifest


def _check_out(out: Path) -> None:
    """A folder that holds files but no manifest belongs to something else: never write into it."""
    if out.is_dir() and not (out / MANIFEST).exists() and any(out.iterdir()):
        raise EvalFolderError(
            f"{out}: holds files but no {MANIFEST}, so it is not an sfr-ds evaluation; "
            "choose another --output-dir (a new or empty folder)"
        )


def _same_model(old: Manifest, new: Manifest) -> bool:
    """Same settings, and the same source or the same content (a run moved or copied together
    with its evaluation folder: its fingerprint does not depend on where it lies)."""
    if old.model.identity() == new.model.identity():
        return True
    moved = dataclasses.replace(old.model, source=new.model.source)
    return moved.identity() == new.model.identity() and old.revision == new.revision


def data_lines(entries: list[TaskEntry]) -> list[str]:
    """Per local task: how much of its data is scored and what was dropped; warnings first-word
    WARNING (anything dropped, or worth a look)."""
    lines = []
    for entry in entries:
        if entry.data is None:
            continue
        tally = Tally(**entry.data)
        lines.append(("WARNING " if tally.dropped else "") + tally.line(entry.name))
        lines += [f"WARNING {entry.name}: {w}" for w in tally.warnings]
    return lines


def task_indices(manifest: Manifest, entries: list[TaskEntry]) -> list[int]:
    """Positions of ``entries`` among the manifest's tasks."""
    names = {e.name for e in entries}
    return [i for i, t in enumerate(manifest.tasks) if t.name in names]


# ----------------------------------------------------------------------------- task state


def write_status(out: Path, task: str, state: str, **extra: Any) -> None:
    atomic_write_json(
        out / "status" / f"{task}.json",
        {"state": state, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), **extra},
    )


def read_status(out: Path, task: str) -> dict[str, Any] | None:
    path = out / "status" / f"{task}.json"
    if not path.exists():
        return None
    status = read_json(path)
    if not isinstance(status, dict) or not isinstance(status.get("state"), str):
        raise EvalFolderError(f"{path}: not a task status (no 'state')")
    return status


def main_score(result_file: Path) -> float:
    """mteb's main score, averaged over the result's splits and subsets."""
    result = read_json(result_file)
    try:
        values = [float(s["main_score"]) for per_split in result["scores"].values() for s in per_split]
        return sum(values) / len(values)
    except (KeyError, TypeError, AttributeError, ValueError, ZeroDivisionError) as e:
        raise EvalFolderError(f"{result_file}: not an mteb result ({type(e).__name__}: {e})") from None


def embedding_width(out: Path) -> int | None:
    """The evaluated model's embedding width, once a run of the folder has loaded it."""
    settings = out / "model_settings.json"
    return read_json(settings).get("embedding_dim") if settings.exists() else None


def truncated_dims(out: Path, manifest: Manifest, width: int | None = None) -> list[int]:
    """The manifest's widths that are a real truncation (narrower than the model's embeddings)."""
    width = width or embedding_width(out)
    return [d for d in manifest.dims if width is None or d < width]


def is_done(out: Path, manifest: Manifest, task: str, dims: list[int | None] | None = None) -> bool:
    """Scores written at every width (or at ``dims``; None is the full width) and no run of it in
    flight (mteb saves partial results between subsets)."""
    status = read_status(out, task)
    dims = [None, *truncated_dims(out, manifest)] if dims is None else dims
    written = all(manifest.result_path(out, task, dim).exists() for dim in dims)
    return written and (status is None or status["state"] == "done")


# ----------------------------------------------------------------------------- running


def run_tasks(
    out: Path, indices: list[int] | None = None, job: str | None = None, progress: bool = True
) -> list[str]:
    """Evaluate the manifest's tasks (all, or ``indices``); finished tasks are skipped without
    loading the model. Returns the names of the tasks that failed; each failure is recorded."""
    manifest = Manifest.load(out)
    entries = [manifest.tasks[i] for i in (range(len(manifest.tasks)) if indices is None else indices)]
    todo = []
    for entry in entries:
        if is_done(out, manifest, entry.name):
            print(f"[sfr-ds eval] {entry.name}: done already, skipped", flush=True)
        else:
            todo.append(entry)
    if not todo:
        return []
    for entry in todo:
        write_status(out, entry.name, "running", job=job)
    try:
        if fingerprint(manifest.model) != manifest.revision:
            raise RuntimeError(
                f"{manifest.model.source} changed since {out / MANIFEST} was written; "
                "run `sfr-ds eval` again to evaluate the new weights"
            )
        encoders = _encoders(manifest, out, progress)
    except Exception as e:  # recorded for every task, so status names the cause
        for entry in todo:
            _failed(out, entry.name, job, e)
        return [entry.name for entry in todo]
    import datasets
    import mteb

    if not progress:  # Slurm logs: no bars from datasets' maps or mteb's loops either
        datasets.disable_progress_bars()
    failed = []
    for entry in todo:
        start = time.time()
        try:
            scores = {}
            for dim, encoder in encoders.items():  # the full width first: it encodes, the rest read
                mteb.evaluate(
                    encoder,
                    [_task(entry)],
                    cache=mteb.ResultCache(out),
                    co2_tracker=False,
                    overwrite_strategy="only-missing",
                    show_progress_bar=False,
                    encode_kwargs={"batch_size": manifest.model.batch_size, "show_progress_bar": progress},
                )
                scores[dim] = main_score(manifest.result_path(out, entry.name, dim))
            score = scores[None]
            counted = {"data": _tally(entry)} if entry.data is None else {}  # a Slurm submit read heads only
            write_status(
                out, entry.name, "done", job=job, score=score, seconds=time.time() - start, **counted
            )
            narrower = "".join(f", {d} dims {v:.4f}" for d, v in scores.items() if d)
            seconds = time.time() - start
            print(f"[sfr-ds eval] {entry.name}: {score:.4f}{narrower} ({seconds:.0f} s)", flush=True)
        except Exception as e:  # one broken task must not stop the others
            _failed(out, entry.name, job, e)
            failed.append(entry.name)
    return failed


def _failed(out: Path, task: str, job: str | None, error: Exception) -> None:
    write_status(
        out,
        task,
        "failed",
        job=job,
        error=f"{type(error).__name__}: {error}",
        traceback=traceback.format_exc(),
    )
    print(f"[sfr-ds eval] {task}: FAILED: {type(error).__name__}: {error}", flush=True)
    if job is not None:  # a Slurm log is read later, by whoever debugs; a terminal gets the line
        traceback.print_exc()


def _tally(entry: TaskEntry) -> dict | None:
    """How much of a local task's data is scored (``readers.Tally``), read as evaluating it did."""
    tally = check_data(entry.spec)
    return tally.to_json() if tally is not None else None


def counted(out: Path, manifest: Manifest) -> list[TaskEntry]:
    """The manifest's tasks with their data counts: from the submitting command when it read all
    the data, else from the status the evaluating run (a Slurm array element) wrote."""
    return [
        entry
        if entry.data is not None
        else dataclasses.replace(entry, data=(read_status(out, entry.name) or {}).get("data"))
        for entry in manifest.tasks
    ]


def _task(entry: TaskEntry):
    from .tasks import build_task

    return build_task(entry.spec)


def _encoders(manifest: Manifest, out: Path, progress: bool) -> dict:
    """The model's mteb encoder at full width (key None) and at each truncated width, all over one
    loaded model and one embedding cache: every text is encoded once."""
    from .encoder import MtebEncoder
    from .models import load_model

    model = load_model(manifest.model)
    width = model.settings["embedding_dim"]
    if too_wide := [d for d in manifest.dims if d > width]:
        raise ValueError(f"--dims {too_wide} exceed the model's embedding width ({width})")
    atomic_write_json(out / "model_settings.json", {"source": manifest.model.source, **model.settings})
    cache = embedding_cache(manifest.model, manifest.cache_dir)
    return {
        dim: MtebEncoder(model, manifest.mteb_name(dim), manifest.revision, cache, progress, dim)
        for dim in [None, *truncated_dims(out, manifest, width)]
    }
