"""The sources ``sfr-ds prepare`` converts: a small YAML, or one source named on the command line.

::

    instructions: {scifact: "Given a claim, find documents that support it"}  # per dataset
    sources:
      - {beir: ../shared/data/scifact, split: train, dataset: scifact}
      - {sts: ../shared/data/stsbenchmark/sts-train.csv, dataset: stsb, min_score: 4.0}
      - {labelled: ../shared/data/banking77/train.csv, dataset: banking77, n_neg: 7}

Each source's other keys are the keyword arguments of its function in ``sfr_ds.data.prepare``
(``from_beir``, ``from_sts``, ``from_labelled``), so the YAML follows the code, types included;
relative paths are read from the YAML's folder. ``Source.inputs`` names the files a source reads,
so that ``sfr-ds prepare`` can refuse an output that is one of them before converting anything.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sfr_ds.config import ConfigError, read_yaml
from sfr_ds.data.prepare import PrepareReport, from_beir, from_labelled, from_sts
from sfr_ds.data.records import Record, RecordError

CONVERTERS = {"beir": from_beir, "sts": from_sts, "labelled": from_labelled}


class SourcesError(ValueError):
    """A sources YAML that cannot be used; the message lists every problem of the file."""


class SourceArgsError(SourcesError):
    """Sources or instructions named wrongly on the command line (a CLI shows its usage)."""


@dataclass
class Source:
    kind: str  # a key of CONVERTERS
    path: str
    options: dict  # keyword arguments of the converter

    def convert(self, instructions: dict[str, str]) -> tuple[list[Record], PrepareReport]:
        options = dict(self.options)
        if "instruction" not in options and options.get("dataset") in instructions:
            options["instruction"] = instructions[options["dataset"]]
        try:
            return CONVERTERS[self.kind](self.path, **options)
        except RecordError:
            raise  # names its file and line already
        except ValueError as e:  # a setting of the source (dataset, n_neg, ...): say which source
            raise ValueError(f"{self.path} ({self.kind} source): {e}") from None

    def inputs(self) -> list[Path]:
        """The files this source reads: its file, or a BEIR folder's corpus, queries and qrels."""
        if self.kind != "beir":
            return [Path(self.path)]
        root = Path(self.path)
        split = self.options.get("split", "train")
        return [root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{split}.tsv"]


def converter_keys(kind: str) -> tuple[list[str], list[str]]:
    """(allowed, required) keyword arguments of the converter: the YAML follows the code."""
    params = list(inspect.signature(CONVERTERS[kind]).parameters.values())[1:]
    return [p.name for p in params], [p.name for p in params if p.default is p.empty]


# Python types of the annotations the converters use (``from __future__`` makes them strings).
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "None": (type(None),),
    "Mapping[str, str]": (dict,),
}


def _type_ok(value, annotation: str) -> bool:
    """Whether a YAML value fits a converter's annotation (``true`` is no number)."""
    allowed = tuple(t for part in annotation.split("|") for t in _TYPES.get(part.strip(), (object,)))
    return isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)


def type_problems(kind: str, options: dict, label: str) -> list[str]:
    """Options whose YAML value has the wrong type, each named: a converter would fail deep inside."""
    params = inspect.signature(CONVERTERS[kind]).parameters
    return [
        f"{label}: {name} must be {params[name].annotation}, got {value!r}"
        for name, value in options.items()
        if name in params and not _type_ok(value, str(params[name].annotation))
    ]


def _parse_source(n: int, item) -> tuple[Source | None, list[str]]:
    """One YAML ``sources`` item as a Source (paths still relative), or what is wrong with it."""
    kinds = [k for k in CONVERTERS if k in (item if isinstance(item, dict) else {})]
    if len(kinds) != 1:
        return None, [f"source {n}: needs exactly one of {list(CONVERTERS)}, got {item!r}"]
    kind = kinds[0]
    options = {k: v for k, v in item.items() if k != kind}
    allowed, required = converter_keys(kind)
    problems = []
    if unknown := [k for k in options if k not in allowed]:
        problems.append(f"source {n} ({kind}): unknown key(s) {unknown}; allowed: {allowed}")
    if missing := [k for k in required if k not in options]:
        problems.append(f"source {n} ({kind}): missing key(s) {missing}")
    problems += type_problems(kind, options, f"source {n} ({kind})")
    if not isinstance(item[kind], str) or not item[kind]:
        return None, [*problems, f"source {n} ({kind}): the path must be a string, got {item[kind]!r}"]
    return Source(kind, item[kind], options), problems


def _read_spec(path: str) -> dict:
    """The YAML's mapping; a file YAML cannot read is one error naming its line (``read_yaml``)."""
    try:
        return read_yaml(path, "a mapping with 'sources'")
    except ConfigError as e:
        raise SourcesError("; ".join(e.problems)) from None


def _instruction_problems(instructions) -> list[str]:
    if not isinstance(instructions, dict) or not all(isinstance(v, str) for v in instructions.values()):
        return ["instructions must map dataset names to instruction strings"]
    return []


def sources_from_yaml(path: str) -> tuple[list[Source], dict[str, str]]:
    """Sources and per-dataset instruction overrides; every problem of the file reported at once."""
    spec = _read_spec(path)
    base = Path(path).resolve().parent
    problems = [
        f"unknown top-level key {k!r} (expected sources, instructions)"
        for k in spec
        if k not in ("sources", "instructions")
    ]
    instructions = spec.get("instructions") or {}
    problems += _instruction_problems(instructions)
    items = spec.get("sources") or []
    if not isinstance(items, list):
        problems.append(f"sources must be a list of sources, got {type(items).__name__}")
        items = []
    sources = []
    for n, item in enumerate(items, 1):
        source, found = _parse_source(n, item)
        problems += found
        if source is not None:
            sources.append(Source(source.kind, str(base / source.path), source.options))
    if not sources and not problems:
        problems.append("no sources listed")
    if problems:
        raise SourcesError(f"{path}:\n  - " + "\n  - ".join(problems))
    return sources, dict(instructions)


def source_from_cli(
    beir=None, sts=None, labelled=None, dataset=None, split="train", task_type="classification"
) -> list[Source]:
    """The one source the command line may name (none when it names none)."""
    given = [(kind, path) for kind, path in (("beir", beir), ("sts", sts), ("labelled", labelled)) if path]
    if len(given) > 1:
        raise SourceArgsError("name one source on the command line; list several in a YAML")
    if not given:
        return []
    kind, path = given[0]
    if dataset is None and kind != "beir":
        raise SourceArgsError(f"--{kind} needs --dataset (it picks the instruction)")
    options = {"dataset": dataset or Path(path).name}
    if kind == "beir":
        options["split"] = split
    if kind == "labelled":
        options["task_type"] = task_type
    return [Source(kind, path, options)]


def parse_instructions(pairs: tuple[str, ...]) -> dict[str, str]:
    """``DATASET=TEXT`` pairs as a dict."""
    out = {}
    for pair in pairs:
        dataset, sep, text = pair.partition("=")
        if not sep or not dataset:
            raise SourceArgsError(f"--instruction expects DATASET=TEXT, got {pair!r}")
        out[dataset] = text
    return out


def gather(
    config: str | None, cli: dict, instruction_pairs: tuple[str, ...]
) -> tuple[list[Source], dict[str, str]]:
    """The YAML's sources then the command line's (``cli``: the keyword arguments of
    ``source_from_cli``); the YAML's instructions overridden by ``DATASET=TEXT`` pairs."""
    sources, instructions = sources_from_yaml(config) if config else ([], {})
    sources += source_from_cli(**cli)
    if not sources:
        raise SourceArgsError("give a SOURCES.yaml or one of --beir, --sts, --labelled")
    instructions.update(parse_instructions(instruction_pairs))
    return sources, instructions


def convert_all(
    sources: list[Source], instructions: dict[str, str], report: Callable[[str], None]
) -> list[Record]:
    """Every source's records in order; ``report`` sees each source's counts as it finishes."""
    records: list[Record] = []
    for source in sources:
        got, counts = source.convert(instructions)
        records += got
        report(str(counts))
    return records
