"""``sfr-ds demo``: one SFR round on the bundled real data, end to end, with a before/after table.

prepare (bundled SciFact/STS-B/Banking77 training subsets) -> mine hard negatives (MiniLM teacher)
-> evaluate the untrained model -> train (2 ranks, DeepSpeed ZeRO-2, GradCache, task-homogeneous
batches) -> merge the LoRA -> evaluate the merged model, both on the held-out ``mini`` suite.

Each stage is the ordinary ``sfr-ds`` command in its own process (what a user would type, shown
as it runs), and each recognises its finished output, so running the demo again after an
interruption continues where it stopped. On a machine with GPUs training uses all of them in bf16.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import PROJECT_ROOT
from .data.records import read_jsonl, write_jsonl
from .pipeline import Stage, cli, eval_stage, mine_stage, run_local, train_stage, written
from .run_dir import META

BUNDLED = PROJECT_ROOT / "sfr_ds" / "resources" / "data"
TRAIN_FILES = ("scifact_train.jsonl", "stsb_train.jsonl", "banking77_train.jsonl")
# Eval lengths: bundled documents are cut at 500 characters (~100-130 tokens).
EVAL_ARGS = ["--suite", "mini", "--query-max-len", "64", "--doc-max-len", "128"]


@dataclass
class DemoOptions:
    config: str = str(PROJECT_ROOT / "configs" / "demo.yaml")
    teacher: str = "builtin:minilm"
    records_per_dataset: int = 128
    window: tuple[int, int] = (30, 100)
    k: int = 7
    nproc: int | None = None  # default: every GPU, else 2 CPU ranks
    train_overrides: list[str] = field(default_factory=list)
    seed: int = 0


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def prepare(out: Path, per_dataset: int, seed: int, exclude: Path | None = None) -> None:
    """A seeded subset of each bundled training file (validated on read) as one training JSONL;
    its mined negatives only form the pool the teacher ranks again. With ``exclude`` (a training
    JSONL), records whose query is a query or positive there are left out first (STS pairs come
    in both directions)."""
    used: set[str] = set()
    for r in read_jsonl(exclude) if exclude else []:
        used.update([r.query, *r.pos])
    records = []
    for name in TRAIN_FILES:
        got = [r for r in read_jsonl(BUNDLED / name) if r.query not in used]
        keep = sorted(random.Random(seed).sample(range(len(got)), min(per_dataset, len(got))))
        records += [got[i] for i in keep]
        print(f"  {name}: {len(keep)} of {len(got)} records" + (f" not in {exclude}" if exclude else ""))
    write_jsonl(records, out)  # atomic: a finished file means a finished stage


def stages(out: Path, o: DemoOptions, gpus: int) -> list[Stage]:
    data, mined, run, merged = (
        out / "data" / "train.jsonl",
        out / "data" / "mined.jsonl",
        out / "train",
        out / "merged",
    )
    nproc = o.nproc or gpus or 2
    train_overrides = [f"data.train_files=[{mined}]", *o.train_overrides]
    if gpus:
        train_overrides += [
            "model.dtype=bf16",
            f"deepspeed.config={PROJECT_ROOT / 'ds_configs' / 'zero2_bf16.json'}",
        ]
    base_model = _base_model(o.config, o.train_overrides)
    return [
        Stage(
            "prepare the bundled training data",
            data,
            written(data),
            call=lambda: prepare(data, o.records_per_dataset, o.seed),
        ),
        mine_stage(
            f"mine hard negatives with {o.teacher}",
            data,
            mined,
            o.teacher,
            "--range",
            o.window[0],
            o.window[1],
            "--k",
            o.k,
        ),
        eval_stage(f"evaluate the untrained {base_model}", base_model, out / "eval" / "before", *EVAL_ARGS),
        train_stage(
            f"train on {nproc} {'GPU' if gpus else 'CPU'} rank(s)", o.config, run, train_overrides, nproc
        ),
        Stage(
            "merge the LoRA into full weights",
            merged,
            written(merged / META),  # sfr-ds merge builds the folder aside and renames it into place
            cli("merge", run, "--out", merged),
        ),
        eval_stage("evaluate the trained (merged) model", merged, out / "eval" / "after", *EVAL_ARGS),
    ]


def _base_model(config: str, overrides: list[str]) -> str:
    """The config's model name (the config is validated by ``sfr-ds train``, once its data exist)."""
    from .config import ModelConfig, apply_overrides, read_yaml

    model = apply_overrides(read_yaml(config), list(overrides)).get("model") or {}
    if model.get("random_init"):
        raise RuntimeError(
            f"{config}: the demo evaluates the untrained model by name before training, "
            "and a random_init model has none; use a pretrained model"
        )
    return model.get("name_or_path", ModelConfig.name_or_path)


def run_demo(out: str | Path, options: DemoOptions | None = None) -> str:
    """Run (or continue) the demo in ``out``; returns the before/after table (also in summary.md)."""
    from .eval.suite import compare, read_scores

    o, out = options or DemoOptions(), Path(out).resolve()
    plan = stages(out, o, _gpus())
    start = time.time()
    run_local(plan, "demo")
    before, after = read_scores(out / "eval" / "before"), read_scores(out / "eval" / "after")
    before.label, after.label = "untrained", "trained"
    table = compare([before, after])
    (out / "summary.md").write_text("# sfr-ds demo: before and after one SFR round\n\n" + table)
    where = "\n".join(f"  {s.name}: {s.output}" for s in plan)
    print(
        f"\n{table}\nwritten in {out} ({time.time() - start:.0f} s):\n{where}\n  table: {out / 'summary.md'}"
    )
    return table
