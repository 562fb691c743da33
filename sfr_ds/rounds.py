"""Mining-then-training rounds: per round r, mine -> train -> eval, as dependent Slurm jobs or locally.

Round 1 mines with the configured teacher, round r > 1 with the model of round r - 1 (``self:``).
With ``soup_last: K`` a round's model is the soup of its run's K newest checkpoints (``sfr-ds soup
--last K``, one LoRA adapter): that is what is evaluated and what mines the next round.
Every stage recognises its complete output and is skipped; the pipeline's state (the job of each
stage) lives in ``<output_dir>/rounds.json``, so running the same command again after any failure
submits only what is missing, and depends on jobs of earlier stages still queued or running.
Jobs are chained with ``afterok`` and ``--kill-on-invalid-dep=yes``: a failed stage cancels its
dependants instead of leaving them pending forever. This module plans the stages;
``sfr_ds.pipeline`` runs them, on Slurm or (``--local``) here as ``sfr-ds demo`` does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import pipeline
from .config import PROJECT_ROOT, ConfigError, build_dataclass, resolve_path
from .pipeline import Job, Stage, eval_stage, mine_stage, train_stage
from .soup import soup_stage


@dataclass
class SlurmResources:
    """Extra sbatch options per stage (eval: one GPU; mining: sharded over --ntasks ranks)."""

    mine: list = field(default_factory=lambda: ["--ntasks=1", "--gpus-per-task=1", "--time=12:00:00"])
    train: list = field(default_factory=list)  # slurm/train_8xa100.sh carries its own #SBATCH lines
    soup: list = field(default_factory=lambda: ["--ntasks=1", "--cpus-per-task=4", "--time=1:00:00"])
    eval: list = field(default_factory=lambda: ["--ntasks=1", "--gpus-per-task=1", "--time=12:00:00"])


@dataclass
class RoundsConfig:
    output_dir: str = "runs/rounds"
    rounds: int = 2
    train_input: str = ""  # training records; their negatives are replaced by mining
    corpus: str = "from-records"  # or a BEIR corpus.jsonl
    teacher: str = "builtin:minilm"  # round 1; later rounds mine with self:<previous round>
    mine_args: list = field(default_factory=list)  # e.g. [--range, 30, 100, --k, 7]
    train_config: str = "configs/sfr_mistral_7b.yaml"
    train_overrides: list = field(default_factory=list)
    train_script: str = "slurm/train_8xa100.sh"
    eval_args: list = field(default_factory=lambda: ["--suite", "dev"])
    soup_last: int = 0  # K >= 2: each round's model is the soup of its K newest checkpoints
    slurm: SlurmResources = field(default_factory=SlurmResources)


def load_rounds_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RoundsConfig:
    from .config import apply_overrides, read_yaml

    data = apply_overrides(read_yaml(path), list(overrides or []))
    problems: list[str] = []
    cfg = build_dataclass(RoundsConfig, data, "", problems)
    if cfg.rounds < 1:
        problems.append("'rounds' must be >= 1")
    if cfg.soup_last == 1 or cfg.soup_last < 0:
        problems.append(f"'soup_last' must be 0 (no soup) or >= 2 checkpoints, got {cfg.soup_last}")
    if not cfg.train_input:
        problems.append("'train_input' is empty: give the training records to mine for")
    if problems:
        raise ConfigError(problems)
    bases = [Path(path).resolve().parent, PROJECT_ROOT]
    cfg.train_input = resolve_path(cfg.train_input, bases)
    cfg.train_config = resolve_path(cfg.train_config, bases)
    cfg.train_script = resolve_path(cfg.train_script, bases)
    cfg.output_dir = str(Path(cfg.output_dir).resolve())
    if cfg.corpus != "from-records":
        cfg.corpus = resolve_path(cfg.corpus, bases)
    named = {
        "train_input": cfg.train_input,
        "train_config": cfg.train_config,
        "train_script": cfg.train_script,
    }
    if cfg.corpus != "from-records":
        named["corpus"] = cfg.corpus
    missing = [f"'{key}': file not found: {path}" for key, path in named.items() if not os.path.exists(path)]
    if missing:
        raise ConfigError(missing)
    return cfg


# ----------------------------------------------------------------------------- stages


def round_dir(cfg: RoundsConfig, r: int) -> Path:
    return Path(cfg.output_dir) / f"round-{r}"


def state_file(cfg: RoundsConfig) -> Path:
    """Each stage's latest Slurm job, by ``ROUND/STAGE``."""
    return Path(cfg.output_dir) / "rounds.json"


def stages(cfg: RoundsConfig, nproc: int = 1) -> list[Stage]:
    """Every round's mine -> train -> eval, in order (``nproc``: training ranks when run here)."""
    return [stage for r in range(1, cfg.rounds + 1) for stage in round_stages(cfg, r, nproc)]


def round_model(cfg: RoundsConfig, r: int) -> Path:
    """What round r produces: its run, or the soup of its last checkpoints."""
    return round_dir(cfg, r) / ("soup" if cfg.soup_last else "train")


def round_stages(cfg: RoundsConfig, r: int, nproc: int) -> list[Stage]:
    d = round_dir(cfg, r)
    mined, run = d / "mined.jsonl", d / "train"
    teacher = cfg.teacher if r == 1 else f"self:{round_model(cfg, r - 1)}"
    keep = [f"run.keep_checkpoints={cfg.soup_last}"] if cfg.soup_last else []  # the user's may raise it
    overrides = [f"data.train_files=[{mined}]", *keep, *map(str, cfg.train_overrides)]
    mine = mine_stage(
        f"round {r} mine",
        cfg.train_input,
        mined,
        teacher,
        "--no-progress",
        *map(str, cfg.mine_args),
        corpus=cfg.corpus,
    )
    train = train_stage(f"round {r} train", cfg.train_config, run, overrides, nproc)
    model = round_model(cfg, r)
    evaluate = eval_stage(f"round {r} eval", model, d / "eval", "--no-progress", *map(str, cfg.eval_args))
    # on Slurm the training script starts the ranks itself (srun) and resumes a requeued job
    script = [cfg.train_script, cfg.train_config, "--output-dir", str(run), *overrides]
    soup = []
    if cfg.soup_last:
        soup = [
            _on_slurm(
                soup_stage(f"round {r} soup", [run], model, "--last", str(cfg.soup_last)), cfg, r, "soup"
            )
        ]
    return [
        _on_slurm(mine, cfg, r, "mine"),
        _on_slurm(train, cfg, r, "train", script),
        *soup,
        _on_slurm(evaluate, cfg, r, "eval"),
    ]


def _on_slurm(stage: Stage, cfg: RoundsConfig, r: int, kind: str, script: list[str] | None = None) -> Stage:
    """The stage's job: named by round and stage, logged to ``round-R/logs``, with its resources."""
    log = round_dir(cfg, r) / "logs" / f"{kind}-%j.out"
    options = [str(o) for o in getattr(cfg.slurm, kind)]
    return replace(stage, job=Job(f"{r}/{kind}", f"sfr-{kind}-r{r}", log, options, script))


# ----------------------------------------------------------------------------- running


def submit(cfg: RoundsConfig, env: Mapping[str, str] | None = None) -> list[str]:
    """Submit every incomplete stage not already queued; returns lines describing what happened."""
    return pipeline.submit(stages(cfg), state_file(cfg), env)


def status(cfg: RoundsConfig, env: Mapping[str, str] | None = None) -> list[str]:
    return pipeline.status(stages(cfg), state_file(cfg), env)


def run_local(cfg: RoundsConfig, nproc: int = 1, env: Mapping[str, str] | None = None) -> None:
    """The same stages one after another on this machine (no Slurm)."""
    pipeline.run_local(stages(cfg, nproc), "rounds", env)
