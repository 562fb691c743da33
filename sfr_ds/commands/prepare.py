"""``sfr-ds prepare``: raw sources (BEIR, STS, labelled CSV) to one training JSONL.

One source can be named on the command line; several go in a small YAML::

    instructions: {scifact: "Given a claim, find documents that support it"}  # per dataset
    sources:
      - {beir: ../shared/data/scifact, split: train, dataset: scifact}
      - {sts: ../shared/data/stsbenchmark/sts-train.csv, dataset: stsb, min_score: 4.0}
      - {labelled: ../shared/data/banking77/train.csv, dataset: banking77, n_neg: 7}

Each source's other keys are the keyword arguments of its function in ``sfr_ds.data.prepare``
(``from_beir``, ``from_sts``, ``from_labelled``); relative paths are read from the YAML's folder.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import click
import yaml

from sfr_ds.data.prepare import PrepareReport, from_beir, from_labelled, from_sts
from sfr_ds.data.records import Record, RecordError, write_jsonl

CONVERTERS = {"beir": from_beir, "sts": from_sts, "labelled": from_labelled}


@dataclass
class Source:
    kind: str  # a key of CONVERTERS
    path: str
    options: dict  # keyword arguments of the converter

    def convert(self, instructions: dict[str, str]) -> tuple[list[Record], PrepareReport]:
        options = dict(self.options)
        if "instruction" not in options and options.get("dataset") in instructions:
            options["instruction"] = instructions[options["dataset"]]
        return CONVERTERS[self.kind](self.path, **options)


def converter_keys(kind: str) -> tuple[list[str], list[str]]:
    """(allowed, required) keyword arguments of the converter: the YAML follows the code."""
    params = list(inspect.signature(CONVERTERS[kind]).parameters.values())[1:]
    return [p.name for p in params], [p.name for p in params if p.default is p.empty]


def sources_from_yaml(path: str) -> tuple[list[Source], dict[str, str]]:
    """Sources and per-dataset instruction overrides; every problem of the file reported at once."""
    spec = yaml.safe_load(Path(path).read_text()) or {}
    base = Path(path).resolve().parent
    problems = [
        f"unknown top-level key {k!r} (expected sources, instructions)"
        for k in spec
        if k not in ("sources", "instructions")
    ]
    instructions = spec.get("instructions") or {}
    if not isinstance(instructions, dict):
        problems.append("instructions must map dataset names to instruction strings")
    sources = []
    for n, item in enumerate(spec.get("sources") or [], 1):
        kinds = [k for k in CONVERTERS if k in (item if isinstance(item, dict) else {})]
        if len(kinds) != 1:
            problems.append(f"source {n}: needs exactly one of {list(CONVERTERS)}, got {item!r}")
            continue
        options = {k: v for k, v in item.items() if k != kinds[0]}
        allowed, required = converter_keys(kinds[0])
        if unknown := [k for k in options if k not in allowed]:
            problems.append(f"source {n} ({kinds[0]}): unknown key(s) {unknown}; allowed: {allowed}")
        if missing := [k for k in required if k not in options]:
            problems.append(f"source {n} ({kinds[0]}): missing key(s) {missing}")
        sources.append(Source(kinds[0], str(base / item[kinds[0]]), options))
    if not sources and not problems:
        problems.append("no sources listed")
    if problems:
        raise click.ClickException(f"{path}:\n  - " + "\n  - ".join(problems))
    return sources, instructions


def source_from_cli(beir, sts, labelled, dataset, split, task_type) -> list[Source]:
    given = [(kind, path) for kind, path in (("beir", beir), ("sts", sts), ("labelled", labelled)) if path]
    if len(given) > 1:
        raise click.UsageError("name one source on the command line; list several in a YAML")
    if not given:
        return []
    kind, path = given[0]
    if dataset is None and kind != "beir":
        raise click.UsageError(f"--{kind} needs --dataset (it picks the instruction)")
    options = {"dataset": dataset or Path(path).name}
    if kind == "beir":
        options["split"] = split
    if kind == "labelled":
        options["task_type"] = task_type
    return [Source(kind, path, options)]


def parse_instructions(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        dataset, sep, text = pair.partition("=")
        if not sep or not dataset:
            raise click.UsageError(f"--instruction expects DATASET=TEXT, got {pair!r}")
        out[dataset] = text
    return out


@click.command("prepare")
@click.argument("config", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL.")
@click.option(
    "--beir",
    type=click.Path(exists=True, file_okay=False),
    help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv).",
)
@click.option("--split", default="train", show_default=True, help="BEIR qrels split.")
@click.option("--sts", type=click.Path(exists=True, dir_okay=False), help="STS-benchmark CSV.")
@click.option(
    "--labelled",
    type=click.Path(exists=True, dir_okay=False),
    help="CSV with text,category columns (labels as documents).",
)
@click.option(
    "--task-type",
    type=click.Choice(["classification", "clustering"]),
    default="classification",
    show_default=True,
)
@click.option("--dataset", help="Dataset name (picks the instruction) [default: BEIR folder name].")
@click.option(
    "--instruction",
    "instructions",
    multiple=True,
    metavar="DATASET=TEXT",
    help="Instruction for a dataset, over the built-in table (repeatable).",
)
def command(config, out, beir, split, sts, labelled, task_type, dataset, instructions):
    """Write one training JSONL: sfr-ds prepare [SOURCES.yaml] [--beir|--sts|--labelled PATH] --out OUT.

    Prints records written and source items skipped, by reason, per source.
    """
    sources, overrides = sources_from_yaml(config) if config else ([], {})
    sources += source_from_cli(beir, sts, labelled, dataset, split, task_type)
    if not sources:
        raise click.UsageError("give a SOURCES.yaml or one of --beir, --sts, --labelled")
    overrides.update(parse_instructions(instructions))
    records: list[Record] = []
    for source in sources:
        try:
            got, report = source.convert(overrides)
        except (RecordError, ValueError, OSError) as e:
            raise click.ClickException(str(e)) from None
        records += got
        click.echo(str(report))
    click.echo(f"wrote {write_jsonl(records, out)} records to {out}")
