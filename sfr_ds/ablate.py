"""``sfr-ds ablate``: the seed's ablation tables, one run directory per row, from one YAML.

A study is a table: its rows change the baseline in one way each (mining teacher, rank window,
negatives mined, training overrides). Every distinct row is mined, trained and evaluated once and
shared between studies (the baseline appears in every table, as in the seed). Mined files are
shared by every row with the same (teacher, window, k). The teacher ``self`` is the baseline
row's trained model: the seed's "the model itself" after round 1.

With ``start_from_demo`` every row fine-tunes the model ``sfr-ds demo`` trained (run first when
its folder is not finished) on bundled records the demo did not train on: the seed fine-tunes
e5-mistral-7b-instruct, a model that already embeds, and a small LM trained from scratch on a few
hundred records is too unstable for its ablations to be read (docs/ablations.md).

A row may instead be the soup of other rows of its study (``soup: [COLUMN, ...]``: the uniform
average of their trained adapters, one LoRA adapter made by ``sfr-ds soup``), evaluated like them.

Layout under ``output_dir``::

    data/train.jsonl             the training records (``train_input``, else the bundled subsets as
                                 the demo prepares them, less the demo's own with start_from_demo)
    mined/TEACHER_LO-HI_kK.jsonl  one file per mining setting
    rows/SLUG/{train,eval}       one run directory and its evaluation per row
    soups/STUDY-COLUMN/{model,eval}  a soup row's adapter and its evaluation
    STUDY.md, ablations.md       the tables in the seed's layout (groups and AVG as rows)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import PROJECT_ROOT, ConfigError, build_dataclass, resolve_path
from .demo import prepare
from .pipeline import Stage, cli, eval_stage, mine_stage, run_local, train_stage, written
from .soup import soup_stage


@dataclass
class Variant:
    """What a row changes; unset fields keep the baseline's."""

    teacher: str | None = None  # bm25 | builtin:minilm | model path | self
    window: list | None = None  # [lo, hi)
    k: int | None = None  # negatives mined per query
    train: dict = field(default_factory=dict)  # training overrides, dotted keys
    soup: list = field(default_factory=list)  # columns of the same study: this row is their soup
    soup_args: list = field(default_factory=list)  # sfr-ds soup options, e.g. [--weights, "2,1,1"]


@dataclass
class Study:
    title: str = ""
    rows: dict = field(default_factory=dict)  # column name -> Variant fields
    dims: list = field(default_factory=list)  # also score its rows at these widths (Matryoshka)


@dataclass
class AblateConfig:
    output_dir: str = "runs/ablate"
    train_config: str = "configs/ablate_cpu.yaml"
    train_input: str = ""  # training records to mine for; empty: the bundled subsets
    records_per_dataset: int = 128  # with the bundled subsets
    start_from_demo: str = ""  # a demo output folder: every row fine-tunes its merged model
    baseline: Variant = field(default_factory=lambda: Variant("builtin:minilm", [30, 100], 7))
    eval_args: list = field(default_factory=lambda: ["--suite", "mini"])
    nproc: int = 2
    studies: dict = field(default_factory=dict)  # name -> Study fields


@dataclass(frozen=True)
class Row:
    teacher: str
    window: tuple[int, int]
    k: int
    train: tuple[tuple[str, str], ...]

    def slug(self, baseline: Row) -> str:
        parts = []
        if self.teacher != baseline.teacher:
            parts.append("teacher-" + self.teacher.split(":")[-1])
        if self.window != baseline.window:
            parts.append(f"window-{self.window[0]}-{self.window[1]}")
        if self.k != baseline.k:
            parts.append(f"k-{self.k}")
        parts += [f"{key}-{value}" for key, value in self.train if (key, value) not in baseline.train]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", "__".join(parts)) or "baseline"

    def mined_name(self) -> str:
        teacher = re.sub(r"[^A-Za-z0-9._-]+", "_", self.teacher.split(":")[-1])
        return f"{teacher}_{self.window[0]}-{self.window[1]}_k{self.k}.jsonl"


def load_ablate_config(
    path: str | os.PathLike, overrides: list[str] | None = None
) -> tuple[AblateConfig, dict[str, Study]]:
    """The config and its studies (each row a ``Variant``); every problem reported at once."""
    from .config import apply_overrides, read_yaml

    data = apply_overrides(read_yaml(path), list(overrides or []))
    problems: list[str] = []
    cfg = build_dataclass(AblateConfig, data, "", problems)
    studies: dict[str, Study] = {}
    for name, spec in (cfg.studies or {}).items():
        study = build_dataclass(Study, spec if isinstance(spec, dict) else {}, f"studies.{name}.", problems)
        study.rows = {
            str(col): build_dataclass(Variant, variant or {}, f"studies.{name}.rows.{col}.", problems)
            for col, variant in (study.rows or {}).items()
        }
        if not study.rows:
            problems.append(f"studies.{name}: no rows")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in study.dims or []):
            problems.append(f"'studies.{name}.dims' must be whole numbers >= 1, got {study.dims!r}")
        studies[name] = study
    if not studies:
        problems.append("'studies' is empty")
    for name, study in studies.items():
        problems += _soup_problems(name, study)
    for where, v in [("baseline", cfg.baseline)] + [
        (f"studies.{n}.rows.{c}", v) for n, s in studies.items() for c, v in s.rows.items()
    ]:
        if v.window is not None and not (len(v.window) == 2 and 0 <= v.window[0] < v.window[1]):
            problems.append(f"'{where}.window' must be [lo, hi) with 0 <= lo < hi, got {v.window}")
    if not (cfg.baseline.teacher and cfg.baseline.window and cfg.baseline.k):
        problems.append("'baseline' needs teacher, window and k")
    if cfg.baseline.teacher == "self":
        problems.append("'baseline.teacher' cannot be self (self is the baseline's own model)")
    if problems:
        raise ConfigError(problems)
    bases = [Path(path).resolve().parent, PROJECT_ROOT]
    cfg.train_config = resolve_path(cfg.train_config, bases)
    if cfg.train_input:
        cfg.train_input = resolve_path(cfg.train_input, bases)
        if not os.path.exists(cfg.train_input):
            raise ConfigError([f"'train_input': file not found: {cfg.train_input}"])
    cfg.output_dir = str(Path(cfg.output_dir).resolve())
    if cfg.start_from_demo:
        cfg.start_from_demo = str(Path(cfg.start_from_demo).resolve())
    return cfg, studies


def _soup_problems(name: str, study: Study) -> list[str]:
    """A soup row names two or more trained columns of its own study, and changes nothing else."""
    problems = []
    for col, v in study.rows.items():
        if not v.soup:
            if v.soup_args:
                problems.append(f"'studies.{name}.rows.{col}.soup_args' without 'soup'")
            continue
        where = f"studies.{name}.rows.{col}.soup"
        trained = [c for c, other in study.rows.items() if not other.soup]
        if unknown := [c for c in v.soup if c not in trained]:
            problems.append(f"'{where}' names {unknown}, not trained columns of the study ({trained})")
        if len(set(v.soup)) < 2:
            problems.append(f"'{where}' needs two or more columns, got {v.soup}")
        if v.teacher or v.window or v.k or v.train:
            problems.append(f"'studies.{name}.rows.{col}': a soup row changes nothing else")
    return problems


def resolve(cfg: AblateConfig, v: Variant) -> Row:
    base = cfg.baseline
    train = {**base.train, **v.train}
    return Row(
        v.teacher or base.teacher,
        tuple(v.window or base.window),
        v.k or base.k,
        tuple(sorted((str(k), _yaml_value(val)) for k, val in train.items())),
    )


def _yaml_value(value) -> str:
    """An override's value as ``key=value`` text that YAML reads back the same."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def plan(cfg: AblateConfig, studies: dict[str, Study]) -> tuple[list[Stage], dict[str, dict[str, Path]]]:
    """Stages for every distinct row (baseline first: ``self`` needs it), and each study's
    column -> evaluation folder."""
    out = Path(cfg.output_dir)
    baseline = resolve(cfg, Variant())
    trained = [(study, v) for study in studies.values() for v in study.rows.values() if not v.soup]
    rows = {baseline: None}
    for _, v in trained:
        rows.setdefault(resolve(cfg, v), None)
    dims: dict[Row, set[int]] = {row: set() for row in rows}  # widths each row is scored at
    for study, v in trained:
        dims[resolve(cfg, v)].update(study.dims)
    data = Path(cfg.train_input) if cfg.train_input else out / "data" / "train.jsonl"
    stages, start = [], []
    demo = Path(cfg.start_from_demo) if cfg.start_from_demo else None
    if demo:
        start = [f"model.name_or_path={demo / 'merged'}"]
        stages += [
            Stage(
                "the starting model: sfr-ds demo",
                demo / "merged",
                written(demo / "summary.md"),  # the demo's last output
                cli("demo", "--output-dir", demo),
            ),
            eval_stage(
                "evaluate the starting model",
                demo / "merged",
                out / "start" / "eval",
                "--no-progress",
                *map(str, cfg.eval_args),
            ),
        ]
    if not cfg.train_input:
        exclude = demo / "data" / "train.jsonl" if demo else None
        stages.append(
            Stage(
                "prepare the bundled training data",
                data,
                written(data),
                call=lambda: prepare(data, cfg.records_per_dataset, 0, exclude),
            )
        )
    mined_done: set[str] = set()
    for row in rows:
        mined = out / "mined" / row.mined_name()
        if mined.name not in mined_done:
            mined_done.add(mined.name)
            stages.append(_mine(row, data, mined, out))
        stages += _train_and_eval(cfg, row, baseline, mined, start, sorted(dims[row], reverse=True))
    columns: dict[str, dict[str, Path]] = {}
    for name, study in studies.items():
        columns[name] = {}
        for col, v in study.rows.items():
            if v.soup:
                soup_stages, folder = _soup_and_eval(cfg, name, col, study, baseline)
                stages += soup_stages
            else:
                folder = out / "rows" / resolve(cfg, v).slug(baseline) / "eval"
            columns[name][col] = folder
    return stages, columns


def _soup_and_eval(
    cfg: AblateConfig, name: str, col: str, study: Study, baseline: Row
) -> tuple[list[Stage], Path]:
    """A soup row: ``sfr-ds soup`` of its columns' trained runs, then its evaluation."""
    v = study.rows[col]
    members = [
        Path(cfg.output_dir) / "rows" / resolve(cfg, study.rows[c]).slug(baseline) / "train" for c in v.soup
    ]
    d = Path(cfg.output_dir) / "soups" / re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}-{col}")
    return [
        soup_stage(f"soup {name}: {col}", members, d / "model", *map(str, v.soup_args)),
        eval_stage(
            f"evaluate soup {name}: {col}",
            d / "model",
            d / "eval",
            "--no-progress",
            *map(str, cfg.eval_args),
            dims=sorted(study.dims, reverse=True),
        ),
    ], d / "eval"


def _mine(row: Row, data: Path, mined: Path, out: Path) -> Stage:
    """``self`` mines with the baseline row's trained model (planned before every other row)."""
    teacher = f"self:{out / 'rows' / 'baseline' / 'train'}" if row.teacher == "self" else row.teacher
    return mine_stage(
        f"mine: {teacher}, ranks {row.window[0]}-{row.window[1]}, k={row.k}",
        data,
        mined,
        teacher,
        "--range",
        row.window[0],
        row.window[1],
        "--k",
        row.k,
        "--no-progress",
    )


def _train_and_eval(
    cfg: AblateConfig, row: Row, baseline: Row, mined: Path, start: list[str], dims: list[int]
) -> list[Stage]:
    """The row's run directory and its evaluation (also at ``dims`` widths), under ``rows/SLUG``."""
    slug = row.slug(baseline)
    d = Path(cfg.output_dir) / "rows" / slug
    overrides = [f"data.train_files=[{mined}]", *start] + [f"{k}={v}" for k, v in row.train]
    return [
        train_stage(f"train row {slug}", cfg.train_config, d / "train", overrides, cfg.nproc),
        eval_stage(
            f"evaluate row {slug}",
            d / "train",
            d / "eval",
            "--no-progress",
            *map(str, cfg.eval_args),
            dims=dims,
        ),
    ]


def tables(cfg: AblateConfig, studies: dict[str, Study], columns: dict[str, dict[str, Path]]) -> str:
    """Each study's table (seed layout) into STUDY.md, all of them into ablations.md."""
    from .eval.suite import compare, read_scores, width_table

    out, parts = Path(cfg.output_dir), []
    if cfg.start_from_demo:
        start = read_scores(out / "start" / "eval")
        start.label = "start"
        parts.append(f"## The starting model ({cfg.start_from_demo}/merged)\n\n" + compare([start]))
    for name, study in studies.items():
        scores = []
        for col, folder in columns[name].items():
            s = read_scores(folder)
            s.label = col
            scores.append(s)
        text = f"## {study.title or name}\n\n" + compare(scores)
        if study.dims:
            text += "\nBy embedding width:\n\n" + width_table(
                list(columns[name].values()), list(columns[name])
            )
            text += "\n"
        (out / f"{name}.md").write_text(text)
        parts.append(text)
    text = "\n".join(parts)
    (out / "ablations.md").write_text(text)
    return text


def run_ablations(cfg: AblateConfig, studies: dict[str, Study]) -> str:
    stages, columns = plan(cfg, studies)
    run_local(stages, "ablate")
    return tables(cfg, studies, columns)
