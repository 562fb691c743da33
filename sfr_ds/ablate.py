"""``sfr-ds ablate``: the seed's ablation tables, one run directory per row, from one YAML.

A study is a table: its rows change the baseline in one way each (mining teacher, rank window,
negatives mined, mining cap, the labelled records' format, the datasets trained on, training
overrides). Every distinct row is mined, trained and evaluated once and shared between studies (the
baseline appears in every table, as in the seed). Mined files are shared by every row with the same
(teacher, window, k, cap). The teacher ``self`` is the baseline row's trained model: the seed's
"the model itself" after round 1.

``labels: examples`` and ``datasets: [...]`` change the records, not the mining: they are applied to
the mined file (a copy per setting), so such a row trains on exactly the baseline's records of its
datasets, with its labelled (classification) records rebuilt the way ``sfr-ds prepare --format
examples`` builds them. Labelled records carry their own negatives and are never mined, so this is
the same as preparing the records that way before mining, without another mining run.

With ``start_from_demo`` every row fine-tunes the model ``sfr-ds demo`` trained (run first when
its folder is not finished) on bundled records the demo did not train on: the seed fine-tunes
e5-mistral-7b-instruct, a model that already embeds, and a small LM trained from scratch on a few
hundred records is too unstable for its ablations to be read (docs/ablations.md).

A row may instead be the soup of other rows of its study (``soup: [COLUMN, ...]``: the uniform
average of their trained adapters, one LoRA adapter made by ``sfr-ds soup``), evaluated like them.

Layout under ``output_dir``::

    data/train.jsonl             the training records (``train_input``, else the bundled subsets as
                                 the demo prepares them, less the demo's own with start_from_demo)
    mined/TEACHER_LO-HI_kK[_cap-CAP].jsonl  one file per mining setting
    mined/MINED__labels-examples__datasets-A-B.jsonl  its records for a labels/datasets setting
    rows/SLUG/{train,eval}       one run directory and its evaluation per row
    soups/STUDY-COLUMN/{model,eval}  a soup row's adapter and its evaluation
    STUDY.md, ablations.md       the tables in the seed's layout (groups and AVG as rows)
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import shlex
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import PROJECT_ROOT, ConfigError, build_dataclass, resolve_path
from .data.prepare import LABELLED_FORMATS, from_labelled
from .data.records import OWN_NEGATIVE_TASKS, Record, RecordError, read_jsonl, write_jsonl
from .demo import BUNDLED, TRAIN_FILES, prepare
from .mining.select import Cap
from .pipeline import Stage, cli, eval_stage, mine_stage, run_local, train_stage, written
from .soup import soup_stage

# The bundled training datasets (``datasets:`` names a subset of them), in TRAIN_FILES order.
BUNDLED_DATASETS = tuple(name.removesuffix("_train.jsonl") for name in TRAIN_FILES)
SEED_KEYS = ("run.seed", "data.seed")  # rows differing only in these are one setting's noise rows
# Measured per row of configs/ablations_cpu.yaml on 2 otherwise idle CPU cores (docs/ablations.md).
SECONDS_PER = {"training": 100, "evaluation": 110}


@dataclass
class Variant:
    """What a row changes; unset fields keep the baseline's."""

    teacher: str | None = None  # bm25 | builtin:minilm | model path | self
    window: list | None = None  # [lo, hi)
    k: int | None = None  # negatives mined per query
    cap: str | None = None  # sfr-ds mine --cap, e.g. relative:0.95 (NV-Retriever's TopK-PercPos)
    labels: str | None = None  # labelled records as labels (pos = its label) or examples (NV-Embed)
    datasets: list | None = None  # train on these datasets' records only; default all
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
    """A row's resolved settings: its identity (equal rows are one run, whatever study names them)."""

    teacher: str
    window: tuple[int, int]
    k: int
    train: tuple[tuple[str, str], ...]
    cap: str = ""  # canonical (str(Cap)); "" none
    labels: str = "labels"
    datasets: tuple[str, ...] = ()  # sorted; () every dataset of the data

    def slug(self, baseline: Row) -> str:
        parts = []
        if self.teacher != baseline.teacher:
            parts.append("teacher-" + self.teacher.split(":")[-1])
        if self.window != baseline.window:
            parts.append(f"window-{self.window[0]}-{self.window[1]}")
        if self.k != baseline.k:
            parts.append(f"k-{self.k}")
        if self.cap != baseline.cap:
            parts.append(f"cap-{self.cap or 'none'}")
        if self.labels != baseline.labels:
            parts.append(f"labels-{self.labels}")
        if self.datasets != baseline.datasets:
            parts.append("datasets-" + ("-".join(self.datasets) or "all"))
        parts += [f"{key}-{value}" for key, value in self.train if (key, value) not in baseline.train]
        return _safe("__".join(parts)) or "baseline"

    def mined_name(self) -> str:
        teacher = _safe(self.teacher.split(":")[-1])
        cap = f"_cap-{_safe(self.cap)}" if self.cap else ""
        return f"{teacher}_{self.window[0]}-{self.window[1]}_k{self.k}{cap}.jsonl"

    def data_name(self) -> str | None:
        """The name of its records' file when they are not the mined file as it is."""
        parts = ["labels-examples"] if self.labels == "examples" else []
        parts += ["datasets-" + "-".join(self.datasets)] if self.datasets else []
        if not parts:
            return None
        return _safe("__".join([self.mined_name().removesuffix(".jsonl"), *parts])) + ".jsonl"

    def setting(self) -> Row:
        """The row without its seeds: what its noise rows share."""
        return dataclasses.replace(self, train=tuple(kv for kv in self.train if kv[0] not in SEED_KEYS))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


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
        problems += _variant_problems(where, v, bundled=not cfg.train_input)
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
        if problems := _train_input_problems(cfg, studies):
            raise ConfigError(problems)
    cfg.output_dir = str(Path(cfg.output_dir).resolve())
    if cfg.start_from_demo:
        cfg.start_from_demo = str(Path(cfg.start_from_demo).resolve())
    return cfg, studies


def _variant_problems(where: str, v: Variant, bundled: bool) -> list[str]:
    """A row's own values; ``datasets`` is checked against the bundled names when it trains on them
    (with ``train_input`` when its records are filtered, one line naming what the file holds)."""
    problems = []
    if v.window is not None and not (len(v.window) == 2 and 0 <= v.window[0] < v.window[1]):
        problems.append(f"'{where}.window' must be [lo, hi) with 0 <= lo < hi, got {v.window}")
    if v.cap is not None:
        try:
            Cap.parse(v.cap)
        except ValueError as e:
            problems.append(f"'{where}.cap': {e}")
    if v.labels is not None and v.labels not in LABELLED_FORMATS:
        problems.append(f"'{where}.labels' must be one of {list(LABELLED_FORMATS)}, got {v.labels!r}")
    if v.datasets is not None:
        names = [d for d in v.datasets if isinstance(d, str) and d]
        if not v.datasets or len(names) < len(v.datasets) or len(set(names)) < len(names):
            problems.append(f"'{where}.datasets' must be one or more distinct names, got {v.datasets!r}")
        elif bundled and (unknown := [d for d in names if d not in BUNDLED_DATASETS]):
            problems.append(
                f"'{where}.datasets' names {unknown}, not bundled training datasets {list(BUNDLED_DATASETS)}"
            )
    return problems


def _train_input_problems(cfg: AblateConfig, studies: dict[str, Study]) -> list[str]:
    """``datasets`` and ``labels: examples`` against what ``train_input`` holds, before any mining
    (read only when a row uses them)."""
    named = [("baseline", cfg.baseline)] + [
        (f"studies.{n}.rows.{c}", v) for n, s in studies.items() for c, v in s.rows.items()
    ]
    if not any(v.datasets or v.labels == "examples" for _, v in named):
        return []
    try:
        records = read_jsonl(cfg.train_input)
    except RecordError as e:
        return [f"'train_input': {e}"]
    held = sorted({r.dataset for r in records})
    problems = [
        f"'{where}.datasets' names {unknown}, not datasets of 'train_input' {held}"
        for where, v in named
        if (unknown := [d for d in v.datasets or [] if d not in held])
    ]
    if not any(map(_labelled, records)):
        problems += [
            f"'{where}.labels': examples needs labelled records (classification with a 'label' field); "
            f"'train_input' has none"
            for where, v in named
            if v.labels == "examples"
        ]
    return problems


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
        if v.teacher or v.window or v.k or v.train or v.cap or v.labels or v.datasets is not None:
            problems.append(f"'studies.{name}.rows.{col}': a soup row changes nothing else")
    return problems


def resolve(cfg: AblateConfig, v: Variant) -> Row:
    """The row's settings: its own, else the baseline's; naming every bundled dataset is ``()``."""
    base = cfg.baseline
    train = {**base.train, **v.train}
    cap = v.cap or base.cap
    datasets = tuple(sorted(set(v.datasets if v.datasets is not None else base.datasets or ())))
    if not cfg.train_input and set(datasets) == set(BUNDLED_DATASETS):
        datasets = ()
    return Row(
        v.teacher or base.teacher,
        tuple(v.window or base.window),
        v.k or base.k,
        tuple(sorted((str(k), _yaml_value(val)) for k, val in train.items())),
        str(Cap.parse(cap)) if cap else "",
        v.labels or base.labels or "labels",
        datasets,
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
    exclude = demo / "data" / "train.jsonl" if demo else None
    if not cfg.train_input:
        stages.append(
            Stage(
                "prepare the bundled training data",
                data,
                written(data),
                call=lambda: prepare(data, cfg.records_per_dataset, 0, exclude),
            )
        )
    pool = None if cfg.train_input else lambda: _bundled_pool(exclude)
    planned: set[str] = set()
    for row in rows:
        mined = out / "mined" / row.mined_name()
        if mined.name not in planned:
            planned.add(mined.name)
            stages.append(_mine(row, data, mined, out))
        records = mined
        if name := row.data_name():
            records = out / "mined" / name
            if name not in planned:
                planned.add(name)
                stages.append(_derive_stage(row, mined, records, pool))
        stages += _train_and_eval(cfg, row, baseline, records, start, sorted(dims[row], reverse=True))
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
    cap = ["--cap", row.cap] if row.cap else []
    return mine_stage(
        f"mine: {teacher}, ranks {row.window[0]}-{row.window[1]}, k={row.k}"
        + (f", cap {row.cap}" if row.cap else ""),
        data,
        mined,
        teacher,
        "--range",
        row.window[0],
        row.window[1],
        *cap,
        "--k",
        row.k,
        "--no-progress",
    )


def _derive_stage(
    row: Row, mined: Path, out: Path, pool: Callable[[], dict[str, list[Record]]] | None
) -> Stage:
    """The row's records from the mined file: its datasets only, labelled records as examples."""
    what = ", ".join(
        (["labelled records as examples"] if row.labels == "examples" else [])
        + ([f"datasets {', '.join(row.datasets)}"] if row.datasets else [])
    )
    return Stage(
        f"records: {what} (from {mined.name})",
        out,
        written(out),
        call=lambda: write_jsonl(derive(read_jsonl(mined), row.labels, row.datasets, pool and pool()), out),
    )


def derive(
    records: list[Record], labels: str, datasets: tuple[str, ...], pool: dict[str, list[Record]] | None
) -> list[Record]:
    """``records`` of ``datasets`` only (all for ``()``), with labelled records rebuilt as
    ``labels`` says. A named dataset without records is a one-line RuntimeError (the run stops
    there, before any training on the wrong data)."""
    if missing := [d for d in datasets if not any(r.dataset == d for r in records)]:
        held = sorted({r.dataset for r in records})
        raise RuntimeError(f"'datasets' names {missing}, but the training records hold only {held}")
    kept = [r for r in records if not datasets or r.dataset in datasets]
    return as_examples(kept, pool or {}) if labels == "examples" else kept


def _labelled(r: Record) -> bool:
    return r.task_type in OWN_NEGATIVE_TASKS and "label" in r.extra


def as_examples(records: list[Record], pool: dict[str, list[Record]]) -> list[Record]:
    """Each labelled record (a ``label`` field) rebuilt by ``sfr-ds prepare --format examples``
    (NV-Embed): the same query, pos = another example of its label, neg = one example of each of as
    many other labels as it had negatives. Examples are drawn from ``pool[dataset]`` (the bundled
    records the ablation may train on) and the records themselves, with seed 0: the same data give
    the same records, whatever the row's seeds. A record whose label has no other example is left
    out (counted); other records are kept as they are, in place."""
    by_dataset: dict[str, list[Record]] = {}
    for r in records:
        if _labelled(r):
            by_dataset.setdefault(r.dataset, []).append(r)
    if not by_dataset:
        raise RuntimeError("labels: examples: no training record is labelled (has a 'label' field)")
    rebuilt = {d: _examples_of(d, rs, pool.get(d, [])) for d, rs in by_dataset.items()}
    out = [rebuilt[r.dataset].get(r.query) if _labelled(r) else r for r in records]
    for d, rs in by_dataset.items():
        left = sum(r.query not in rebuilt[d] for r in rs)
        print(f"  {d}: {len(rs) - left} records as examples, {left} left out (no other example of its label)")
    return [r for r in out if r is not None]


def _examples_of(dataset: str, records: list[Record], pool: list[Record]) -> dict[str, Record]:
    """query -> its examples record, by ``prepare.from_labelled`` over a CSV of the pool's texts."""
    texts = {r.query: str(r.extra["label"]) for r in [*pool, *records] if _labelled(r)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{dataset}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "category"), *texts.items()])
        got, _ = from_labelled(
            path,
            dataset,
            instruction=records[0].instruction,
            task_type=records[0].task_type,
            n_neg=max(len(r.neg) for r in records),
            seed=0,
            format="examples",
        )
    return {r.query: r for r in got}


def _bundled_pool(exclude: Path | None) -> dict[str, list[Record]]:
    """The bundled labelled records the ablation may train on: all but the demo's (``exclude``)."""
    used = {t for r in read_jsonl(exclude) for t in [r.query, *r.pos]} if exclude else set()
    pool = {}
    for name in TRAIN_FILES:
        records = [r for r in read_jsonl(BUNDLED / name) if _labelled(r) and r.query not in used]
        if records:
            pool[records[0].dataset] = records
    return pool


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
    """Each study's table (seed layout) into STUDY.md, all of them into ablations.md; a study whose
    rows repeat a setting with other seeds also gets each setting's mean ± sd over its seeds."""
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
        if means := seed_means(scores, [_setting_of(cfg, study, col) for col in columns[name]]):
            text += "\nMean ± standard deviation over each setting's seeds:\n\n" + means
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


def _setting_of(cfg: AblateConfig, study: Study, col: str) -> Row | str:
    """What a column's seeds share: its resolved row without seeds (a soup row is its own)."""
    v = study.rows[col]
    return f"soup {col}" if v.soup else resolve(cfg, v).setting()


def seed_means(scores: list, settings: list) -> str:
    """Markdown: one column per setting (named by its first column, n seeds), its groups' and AVG's
    mean ± sample standard deviation over its columns, then Δ of each mean against the first;
    "" when no setting has two columns."""
    groups: dict = {}
    for s, setting in zip(scores, settings):
        groups.setdefault(setting, []).append(s)
    if all(len(members) < 2 for members in groups.values()):
        return ""
    names = list(dict.fromkeys(g for s in scores for g in s.groups)) + ["AVG"]
    cols = [f"{members[0].label} (n={len(members)})" for members in groups.values()]
    lines = [
        "| Metric | " + " | ".join(cols + [f"Δ {c}" for c in cols[1:]]) + " |",
        "|" + "---|" * (2 * len(cols)),
    ]
    for metric in names:
        values = [[s.avg if metric == "AVG" else s.groups.get(metric) for s in m] for m in groups.values()]
        values = [[x for x in v if x is not None] for v in values]
        means = [statistics.mean(v) if v else None for v in values]
        cells = [
            "–" if m is None else f"{m:.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")
            for m, v in zip(means, values)
        ]
        cells += ["–" if m is None or means[0] is None else f"{m - means[0]:+.2f}" for m in means[1:]]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def describe_plan(stages: list[Stage]) -> str:
    """``--plan``: each stage, done or to do (with the command it would run), then what is left to
    run and its rough cost at the CPU scale's measured seconds per training and evaluation."""
    lines, todo = [], {"mining": 0, "training": 0, "evaluation": 0, "other": 0}
    for stage in stages:
        done = stage.done()
        lines.append(f"[{'done' if done else 'todo'}] {stage.name} -> {stage.output}")
        if done:
            continue
        todo[_kind(stage)] += 1
        lines.append("    $ " + (_shown(stage.command) if stage.command else "(a step in this process)"))
    cost = sum(SECONDS_PER.get(k, 0) * n for k, n in todo.items())
    lines += [
        f"{len(stages)} stages, {len(stages) - sum(todo.values())} finished; to run: "
        + ", ".join(f"{n} {kind}" for kind, n in todo.items()),
        f"about {cost / 60:.0f} min of training and evaluation at {SECONDS_PER['training']} s per training "
        f"and {SECONDS_PER['evaluation']} s per evaluation (configs/ablations_cpu.yaml's rows on 2 idle "
        "CPU cores; #HN and batch size change it), plus the mining",
    ]
    return "\n".join(lines)


def _kind(stage: Stage) -> str:
    for prefix, kind in (("mine:", "mining"), ("train row", "training"), ("evaluate", "evaluation")):
        if stage.name.startswith(prefix):
            return kind
    return "other"


def _shown(command: list[str]) -> str:
    """The command as a user types it: ``sfr-ds ...`` for this interpreter's ``-m sfr_ds.cli``."""
    if command[1:3] == ["-m", "sfr_ds.cli"]:
        command = ["sfr-ds", *command[3:]]
    return shlex.join(map(str, command))


def run_ablations(cfg: AblateConfig, studies: dict[str, Study]) -> str:
    stages, columns = plan(cfg, studies)
    run_local(stages, "ablate")
    return tables(cfg, studies, columns)
