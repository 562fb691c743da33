"""Mining-then-training rounds: per round r, mine -> train -> eval, as dependent Slurm jobs or locally.

Round 1 mines with the configured teacher, round r > 1 with the model of round r - 1 (``self:``).
Every stage recognises its complete output and is skipped; the pipeline's state (the job of each
stage) lives in ``<output_dir>/rounds.json``, so running the same command again after any failure
submits only what is missing, and depends on jobs of earlier stages still queued or running.
Jobs are chained with ``afterok`` and ``--kill-on-invalid-dep=yes``: a failed stage cancels its
dependants instead of leaving them pending forever.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import PROJECT_ROOT, ConfigError, build_dataclass, resolve_path

STAGES = ("mine", "train", "eval")
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


@dataclass
class SlurmResources:
    """Extra sbatch options per stage (eval: one GPU; mining: sharded over --ntasks ranks)."""

    mine: list = field(default_factory=lambda: ["--ntasks=1", "--gpus-per-task=1", "--time=12:00:00"])
    train: list = field(default_factory=list)  # slurm/train_8xa100.sh carries its own #SBATCH lines
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
    slurm: SlurmResources = field(default_factory=SlurmResources)


def load_rounds_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RoundsConfig:
    from .config import apply_overrides

    data = apply_overrides(yaml.safe_load(Path(path).read_text()) or {}, list(overrides or []))
    problems: list[str] = []
    cfg = build_dataclass(RoundsConfig, data, "", problems)
    if cfg.rounds < 1:
        problems.append("'rounds' must be >= 1")
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
    missing = [p for p in (cfg.train_input, cfg.train_config, cfg.train_script) if not os.path.exists(p)]
    if missing:
        raise ConfigError([f"file not found: {m}" for m in missing])
    return cfg


# ----------------------------------------------------------------------------- stages


def round_dir(cfg: RoundsConfig, r: int) -> Path:
    return Path(cfg.output_dir) / f"round-{r}"


def stage_complete(cfg: RoundsConfig, r: int, stage: str) -> bool:
    """Mining and training outputs are written atomically; eval is done when every task is."""
    d = round_dir(cfg, r)
    if stage == "mine":
        return (d / "mined.jsonl").exists()
    if stage == "train":
        return (d / "train" / "final" / "sfr_ds.json").exists()
    from .eval.runner import Manifest, is_done

    try:
        manifest = Manifest.load(d / "eval")
    except FileNotFoundError:
        return False
    return all(is_done(d / "eval", manifest, t.name) for t in manifest.tasks)


def commands(cfg: RoundsConfig, r: int) -> dict[str, list[str]]:
    d = round_dir(cfg, r)
    teacher = cfg.teacher if r == 1 else f"self:{round_dir(cfg, r - 1) / 'train'}"
    py = [sys.executable, "-m", "sfr_ds.cli"]
    return {
        "mine": py
        + [
            "mine",
            cfg.train_input,
            "--corpus",
            cfg.corpus,
            "--teacher",
            teacher,
            "--out",
            str(d / "mined.jsonl"),
            "--no-progress",
            *map(str, cfg.mine_args),
        ],
        "train": [
            cfg.train_config,
            "--output-dir",
            str(d / "train"),
            f"data.train_files=[{d / 'mined.jsonl'}]",
            *map(str, cfg.train_overrides),
        ],
        "eval": py
        + [
            "eval",
            str(d / "train"),
            "--output-dir",
            str(d / "eval"),
            "--no-progress",
            *map(str, cfg.eval_args),
        ],
    }


class Pipeline:
    def __init__(self, cfg: RoundsConfig, env: dict | None = None):
        self.cfg, self.env = cfg, dict(env or os.environ)
        self.state_path = Path(cfg.output_dir) / "rounds.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self.state_path)

    def done(self, r: int, stage: str) -> bool:
        return stage_complete(self.cfg, r, stage)

    # ------------------------------------------------------------------ slurm
    def job_state(self, job: str) -> str:
        p = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, env=self.env, timeout=60
        )
        return p.stdout.strip() or "ENDED"

    def _sbatch(self, args: list[str]) -> str:
        p = subprocess.run(
            ["sbatch", "--parsable", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            cwd=PROJECT_ROOT,
        )
        if p.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {p.stderr.strip()}")
        return p.stdout.strip().split(";")[0]

    def submit(self) -> list[str]:
        """Submit every incomplete stage not already queued; returns lines describing what happened."""
        report, previous = [], None
        for r in range(1, self.cfg.rounds + 1):
            logs = round_dir(self.cfg, r) / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            cmds = commands(self.cfg, r)
            for stage in STAGES:
                key = f"{r}/{stage}"
                if self.done(r, stage):
                    report.append(f"round {r} {stage}: complete, skipped")
                    previous = None
                    continue
                job = self.state.get(key)
                if job and self.job_state(job) in ACTIVE:
                    report.append(f"round {r} {stage}: job {job} still {self.job_state(job).lower()}")
                    previous = job
                    continue
                args = [
                    f"--job-name=sfr-{stage}-r{r}",
                    f"--output={logs}/{stage}-%j.out",
                    *getattr(self.cfg.slurm, stage),
                ]
                if previous:
                    args += [f"--dependency=afterok:{previous}", "--kill-on-invalid-dep=yes"]
                if stage == "train":
                    args += [self.cfg.train_script, *cmds["train"]]
                else:
                    args += ["--wrap", "srun " + shlex.join(cmds[stage])]
                previous = self._sbatch(args)
                self.state[key] = previous
                self._save()
                report.append(f"round {r} {stage}: submitted job {previous}")
        return report

    def status(self) -> list[str]:
        lines = []
        for r in range(1, self.cfg.rounds + 1):
            for stage in STAGES:
                job = self.state.get(f"{r}/{stage}")
                if self.done(r, stage):
                    what = "complete"
                elif job and (s := self.job_state(job)) in ACTIVE:
                    what = f"job {job} {s.lower()}"
                elif job:
                    logs = round_dir(self.cfg, r) / "logs"
                    what = f"job {job} ended without its output: failed or cancelled (see {logs})"
                else:
                    what = "not submitted"
                lines.append(f"round {r} {stage}: {what}")
        return lines

    # ------------------------------------------------------------------ local
    def run_local(self, nproc: int = 1) -> list[str]:
        """The same stages one after another on this machine (no Slurm)."""
        report = []
        for r in range(1, self.cfg.rounds + 1):
            cmds = commands(self.cfg, r)
            for stage in STAGES:
                if self.done(r, stage):
                    report.append(f"round {r} {stage}: complete, skipped")
                    continue
                cmd = cmds[stage]
                if stage == "train":
                    cmd = [
                        sys.executable,
                        "-m",
                        "sfr_ds.cli",
                        "train",
                        *cmd,
                        "--resume",
                        "--nproc-per-node",
                        str(nproc),
                    ]
                if subprocess.call(cmd, env=self.env, cwd=PROJECT_ROOT) != 0:
                    raise RuntimeError(f"round {r} {stage} failed: {shlex.join(cmd)}")
                report.append(f"round {r} {stage}: done")
        return report
