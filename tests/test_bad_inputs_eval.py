"""Bad inputs to `sfr-ds eval` (run, status, collect, resubmit, compare, lengths, worker) and to the
local task kinds it reads: each refused in one clean message naming the file and line or field,
found before any model loads and before the output folder exists, with every file that was there
left as it was. Plus the two ways a user's names used to escape: a job script that ran what an
output path held, and a task name that wrote outside the evaluation.

Every case fails before torch or mteb is imported (models are stub folders; `builtin:minilm` is
only named), except the one unknown MTEB name, which has to ask mteb."""

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from bad_inputs import refused
from conftest import ROOT, proc_env, run

from sfr_ds.eval.models import ModelSpec
from sfr_ds.eval.runner import MANIFEST, prepare
from sfr_ds.eval.specs import describe

pytestmark = pytest.mark.integration

HEADER = b'{"__metadata__": {}}'
SAFETENSORS = len(HEADER).to_bytes(8, "little") + HEADER  # a valid (empty) safetensors file
ONE_TENSOR = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
CUT_TENSOR = len(ONE_TENSOR).to_bytes(8, "little") + ONE_TENSOR + b"\0" * 4  # 4 of its 8 bytes
CORPUS = '{"_id": "d1", "title": "", "text": "alpha"}\n{"_id": "d2", "text": "beta"}\n'
QUERIES = '{"_id": "q1", "text": "alpha?"}\n'
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\n"
STS_JSONL = (
    '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "c", "sentence2": "d", "score": 4}\n'
)
STS_TSV = "main-news\t2012\tMSRpar\t0001\t4.0\tA man runs.\tA man is running.\n"
LABELLED = "text,category\nhello,greet\nbye,leave\n"
RERANK = '{"query": "q", "positive": ["p"], "negative": ["n"]}\n'


ADAPTER_META = {
    "base_model": "builtin:minilm",
    "random_init": False,
    "pooling": "mean",
    "normalize": True,
    "append_eos": False,
    "query_max_len": 32,
    "doc_max_len": 32,
    "dtype": "fp32",
}


def write(path: Path, data: str | bytes = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def beir(t: Path, **files: str | bytes) -> Path:
    """A two-document BEIR folder ``t/beir``; ``files`` replace its corpus, queries or qrels."""
    root = t / "beir"
    contents = {"corpus": CORPUS, "queries": QUERIES, "qrels": QRELS, **files}
    write(root / "corpus.jsonl", contents["corpus"])
    write(root / "queries.jsonl", contents["queries"])
    write(root / "qrels" / "test.tsv", contents["qrels"])
    return root


def hf_model(path: Path, config: str | bytes = '{"model_type": "bert"}', weights: bytes | None = SAFETENSORS):
    """A stub transformers folder: enough for the checks, never loaded."""
    write(path / "config.json", config)
    if weights is not None:
        write(path / "model.safetensors", weights)
    return path


def adapter(
    path: Path, meta: dict | str | None = None, config: str = "{}", weights: bytes | None = SAFETENSORS
):
    """A stub sfr-ds adapter folder (sfr_ds.json, adapter_config.json, adapter weights)."""
    meta = meta if isinstance(meta, str) else json.dumps({**ADAPTER_META, **(meta or {})})
    write(path / "sfr_ds.json", meta)
    write(path / "adapter_config.json", config)
    if weights is not None:
        write(path / "adapter_model.safetensors", weights)
    return path


def evaluation(t: Path, model: str = "builtin:minilm") -> Path:
    """A real evaluation folder (manifest only, nothing run) of one small local STS task."""
    data = write(t / "data" / "pairs.jsonl", STS_JSONL)
    out = t / "eval"
    prepare(out, ModelSpec(model), describe(f"sts:{data}?name=Pairs"))
    return out


def ev(t: Path, *tasks: str, model: str | Path = "builtin:minilm", out: Path | None = None) -> tuple:
    """``eval run MODEL --tasks ...`` into ``out`` (``t/out``), which must not exist afterwards."""
    return ("eval", "run", model, "--tasks", ",".join(map(str, tasks)), "--output-dir", out or t / "out")


def sts(t: Path, text: str | bytes = STS_JSONL, name: str = "sts.jsonl") -> str:
    return f"sts:{write(t / name, text)}"


def with_model(t: Path, model: str | Path) -> tuple:
    """``eval run MODEL`` of one good STS task: the cases whose mistake is the model."""
    return ev(t, sts(t), model=model)


SICK_HEADER = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"


def semeval(t: Path, inputs: str | bytes, gold: str) -> str:
    """``sts:`` of a SemEval year folder ``t/semeval`` with one subset, x."""
    write(t / "semeval" / "STS.input.x.txt", inputs)
    write(t / "semeval" / "STS.gs.x.txt", gold)
    return f"sts:{t / 'semeval'}"


def ret(t: Path, query: str = "", **files: str | bytes) -> tuple:
    """``eval run`` of the retrieval task ``beir(t, **files)``, with ``query`` (``?split=...``) after it."""
    return ev(t, f"retrieval:{beir(t, **files)}{query}")


def lengths(t: Path, model: str | Path, task: str, out: Path | None = None) -> tuple:
    """``eval lengths builtin:minilm MODEL --task TASK`` into ``out`` (``t/l``)."""
    return ("eval", "lengths", "builtin:minilm", model, "--task", task, "--output-dir", out or t / "l")


def clustering(t: Path, text: str | bytes, options: str = "") -> str:
    return f"clustering:{write(t / 'c.csv', text)}{options}"


def rerank(t: Path, text: str | bytes, name: str = "r.jsonl") -> str:
    return f"reranking:{write(t / name, text)}"


def classification(t: Path, train: str | None = None, options: str = "") -> str:
    """A classification task on the folder ``t/cls``: test.csv, and train.csv unless ``train`` is None."""
    write(t / "cls" / "test.csv", LABELLED)
    if train is not None:
        write(t / "cls" / "train.csv", train)
    return f"classification:{t / 'cls'}{options}"


BIG = "text,category\n" + "x" * 200_000 + ",a\n"
NO_ID = '{"text": "x"}\n'
BAD_LINE = "{oops\n"
REPEATED = '{"_id": "d1"}\n'
NOT_UTF8 = b'{"_id": "\xff"}\n'
TEXT_NOT_STR = '{"_id": "q1", "text": 5}\n'
SHORT_QRELS = "q1 d1 1\n"
WORDY_QRELS = "q1\td2\thigh\n"
STRANGER_QRELS = "q9\td1\t1\n"
ONE_LABEL = "text,category\na,x\nb,x\n"
CASES = {
    # ---- the model (checked before any data, without torch)
    "model path missing": lambda t: (with_model(t, f"{t}/nope"), [f"{t}/nope", "no such"]),
    "model is a file": lambda t: (with_model(t, write(t / "m.bin")), ["m.bin", "a file"]),
    "model folder not a model": lambda t: (
        with_model(t, write(t / "m" / "notes.txt").parent),
        [f"{t}/m", "no sfr_ds.json", "no config.json"],
    ),
    "config.json not json": lambda t: (
        with_model(t, hf_model(t / "m", config="{model_type")),
        ["m/config.json", "cannot be read"],
    ),
    "model without weights": lambda t: (
        with_model(t, hf_model(t / "m", weights=None)),
        [f"{t}/m", "no model weights"],
    ),
    "weights cut short": lambda t: (
        with_model(t, hf_model(t / "m", weights=SAFETENSORS[:12])),
        ["m/model.safetensors", "truncated"],
    ),
    "sfr_ds.json unreadable": lambda t: (
        with_model(t, adapter(t / "m", meta="{oops")),
        ["m/sfr_ds.json", "cannot be read"],
    ),
    "adapter_config unreadable": lambda t: (
        with_model(t, adapter(t / "m", config="[1,")),
        ["m/adapter_config.json", "cannot be read"],
    ),
    "adapter weights cut short": lambda t: (
        with_model(t, adapter(t / "m", weights=CUT_TENSOR)),
        ["m/adapter_model.safetensors", "truncated"],
    ),
    "sfr_ds.json names no base": lambda t: (
        with_model(t, adapter(t / "m", meta=json.dumps({"pooling": "mean"}))),
        ["m/sfr_ds.json", "lacks ['base_model'"],
    ),
    "adapter weights missing": lambda t: (
        with_model(t, adapter(t / "m", weights=None)),
        [f"{t}/m/adapter_model.safetensors", "missing"],
    ),
    "random-init base gone": lambda t: (
        with_model(t, adapter(t / "run" / "final", {"random_init": True, "base_model_dir": "../base_model"})),
        ["final/sfr_ds.json", "base_model", "is gone"],
    ),
    "run without final": lambda t: (
        with_model(t, write(t / "run" / "run.yaml", "model: {}\n").parent),
        [f"{t}/run", "no final model"],
    ),
    "unknown builtin": lambda t: (with_model(t, "builtin:nope"), ["builtin:nope", "known"]),
    "hub name not cached offline": lambda t: (
        with_model(t, "no-such-org/no-such-model"),
        ["no-such-org/no-such-model", "Hugging Face cache"],
    ),
    # ---- task specs
    "unknown kind": lambda t: (ev(t, f"retreival:{beir(t)}"), ["retreival:", "unknown kind 'retreival'"]),
    "unknown option": lambda t: (ev(t, f"sts:{t}?colour=red"), ["unknown option(s) ['colour']"]),
    "name with ..": lambda t: (ev(t, sts(t) + "?name=.."), ["?name=..", "name='..'", "'..'"]),
    "empty name": lambda t: (ev(t, sts(t) + "?name="), ["?name=", "is empty"]),
    "split escapes": lambda t: (ret(t, "?split=../x"), ["?split=../x", "path separator"]),
    "train escapes": lambda t: (
        ev(t, classification(t, LABELLED, "?train=../secret.csv")),
        ["?train=../secret.csv", "path separator"],
    ),
    "data path missing": lambda t: (ev(t, f"retrieval:{t}/nowhere"), [f"{t}/nowhere does not exist"]),
    "no path": lambda t: (ev(t, "sts:"), ["sts:", "no PATH"]),
    "duplicate task names": lambda t: (
        ev(t, sts(t) + "?name=A", sts(t, STS_JSONL, "b.jsonl") + "?name=A"),
        ["two specs name the same task ['A']"],
    ),
    "unknown suite": lambda t: (
        ("eval", "run", "builtin:minilm", "--suite", "nope"),
        ["unknown suite 'nope'"],
    ),
    "suite without data root": lambda t: (
        ("eval", "run", "builtin:minilm", "--suite", "dev", "--output-dir", t / "out"),
        ["suite 'dev'", "--data-root"],
    ),
    "data root missing a suite file": lambda t: (
        (
            "eval",
            "run",
            "builtin:minilm",
            "--suite",
            "dev",
            "--data-root",
            beir(t).parent,
            "--output-dir",
            t / "out",
        ),
        ["banking77/test.csv does not exist"],
    ),
    "bad max length": lambda t: (ev(t, sts(t)) + ("--query-max-len", "0"), ["--query-max-len"]),
    "dims not numbers": lambda t: (ev(t, sts(t)) + ("--dims", "256,half"), ["--dims", "'256,half'"]),
    "dims zero": lambda t: (ev(t, sts(t)) + ("--dims", "0"), ["--dims", "whole numbers >= 1"]),
    "padded and max tokens": lambda t: (
        ev(t, sts(t)) + ("--padded", "--max-tokens", "512"),
        ["--padded and --max-tokens exclude each other"],
    ),
    # ---- retrieval: BEIR folders
    "retrieval of a file": lambda t: (
        ev(t, f"retrieval:{write(t / 'c.jsonl', CORPUS)}"),
        ["c.jsonl is a file", "BEIR folder"],
    ),
    "corpus missing": lambda t: (ret(t), ["beir/corpus.jsonl", "does not exist"]),
    "corpus empty": lambda t: (ret(t, corpus=""), ["beir/corpus.jsonl", "holds no rows"]),
    "corpus bad json": lambda t: (
        ret(t, corpus=CORPUS + BAD_LINE),
        ["beir/corpus.jsonl:3", "not valid JSON"],
    ),
    "corpus without _id": lambda t: (ret(t, corpus=NO_ID), ["beir/corpus.jsonl:1", "'_id'"]),
    "corpus repeated _id": lambda t: (
        ret(t, corpus=CORPUS + REPEATED),
        ["beir/corpus.jsonl:3", "'d1' repeated", "corpus.jsonl:1"],
    ),
    "corpus line not an object": lambda t: (
        ret(t, corpus="[1, 2]"),
        ["beir/corpus.jsonl:1", "expected a JSON object"],
    ),
    "corpus not utf-8": lambda t: (
        ret(t, corpus=CORPUS.encode() + NOT_UTF8),
        ["beir/corpus.jsonl:3", "UTF-8"],
    ),
    "queries text not a string": lambda t: (
        ret(t, queries=TEXT_NOT_STR),
        ["beir/queries.jsonl:1", "field 'text'"],
    ),
    "qrels of the split missing": lambda t: (ret(t, "?split=dev"), ["beir/qrels/dev.tsv", "does not exist"]),
    "qrels score not a number": lambda t: (
        ret(t, qrels=QRELS + WORDY_QRELS),
        ["beir/qrels/test.tsv:3", "field 'score'", "'high'"],
    ),
    "qrels short row": lambda t: (
        ret(t, qrels=SHORT_QRELS),
        ["beir/qrels/test.tsv:1", "query-id<TAB>corpus-id<TAB>score"],
    ),
    "qrels match no query": lambda t: (
        ret(t, qrels=STRANGER_QRELS),
        ["beir/qrels/test.tsv", "none of its query ids", "queries.jsonl"],
    ),
    "corpus is a folder": lambda t: (ret(t), ["beir/corpus.jsonl", "is a folder"]),
    # ---- sts: STS-B TSV and JSONL
    "sts tsv too few columns": lambda t: (
        ev(t, sts(t, "a\tb\tc\n", "sts.csv")),
        ["sts.csv:1", "expected 7 tab-separated columns", "got 3"],
    ),
    "sts tsv score not a number": lambda t: (
        ev(t, sts(t, STS_TSV + STS_TSV.replace("4.0", "four"), "sts.csv")),
        ["sts.csv:2", "field 'score'", "'four'"],
    ),
    "sts jsonl missing sentence2": lambda t: (
        ev(t, sts(t, STS_JSONL + '{"sentence1": "a", "score": 2}\n')),
        ["sts.jsonl:3", "field 'sentence2' is missing"],
    ),
    "sts jsonl score nan": lambda t: (
        ev(t, sts(t, '{"sentence1": "a", "sentence2": "b", "score": NaN}\n')),
        ["sts.jsonl:1", "field 'score'", "finite number"],
    ),
    "sts empty": lambda t: (ev(t, sts(t, "\n\n", "sts.csv")), ["sts.csv", "holds no rows"]),
    "sts path is a folder": lambda t: (
        ev(t, f"sts:{write(t / 'sts.csv' / 'x').parent}"),
        ["sts.csv", "is a folder"],
    ),
    # ---- sts: SemEval STS 2012-2016 (STS.input.X.txt + STS.gs.X.txt) and SICK
    "semeval gold shorter": lambda t: (
        ev(t, semeval(t, "a\tb\nc\td\n", "3.0\n")),
        ["STS.input.x.txt: 2 lines", "STS.gs.x.txt has 1"],
    ),
    "semeval one column": lambda t: (
        ev(t, semeval(t, "a\tb\nonly one\n", "3.0\n2.5\n")),
        ["STS.input.x.txt:2", "sentence1<TAB>sentence2", "1 column"],
    ),
    "semeval gold not a number": lambda t: (
        ev(t, semeval(t, "a\tb\n", "high\n")),
        ["STS.gs.x.txt:1", "field 'score'", "'high'"],
    ),
    "semeval gold missing": lambda t: (
        ev(t, "sts:" + str(write(t / "y" / "STS.input.x.txt", "a\tb\n").parent)),
        ["STS.input.x.txt", "no gold scores beside it", "STS.gs.x.txt"],
    ),
    "semeval not utf-8": lambda t: (
        ev(t, semeval(t, b"a\tb\n\xe9\tc\n", "1\n2\n")),
        ["STS.input.x.txt:2", "UTF-8"],
    ),
    "sts folder of other files": lambda t: (
        ev(t, f"sts:{write(t / 'y' / 'notes.txt', 'x').parent}"),
        ["y is a folder with none of them", "STS.input"],
    ),
    "sick header without score": lambda t: (
        ev(t, sts(t, "pair_ID\tsentence_A\tsentence_B\n1\ta\tb\n", "SICK.txt")),
        ["SICK.txt:1", "lacks ['relatedness_score']"],
    ),
    "sick score not a number": lambda t: (
        ev(t, sts(t, SICK_HEADER + "1\ta\tb\tlots\tNEUTRAL\n", "SICK_train.txt")),
        ["SICK_train.txt:2", "field 'relatedness_score'", "'lots'"],
    ),
    "sick split without SemEval_set": lambda t: (
        ev(t, sts(t, SICK_HEADER + "1\ta\tb\t4.5\tNEUTRAL\n", "SICK_test_annotated.txt") + "?split=test"),
        ["SICK_test_annotated.txt:1", "?split=test needs the SemEval_set column"],
    ),
    "qrels grade fractional": lambda t: (
        ret(t, qrels="q1\td1\t1.5\n"),
        ["beir/qrels/test.tsv:1", "'1.5'", "whole number >= 0"],
    ),
    "qrels grade negative": lambda t: (
        ret(t, qrels=QRELS + "q1\td2\t-1\n"),
        ["beir/qrels/test.tsv:3", "'-1'", "whole number >= 0"],
    ),
    "sts not utf-8": lambda t: (
        ev(t, sts(t, STS_TSV.encode() + b"x\t\xe9\n", "sts.csv")),
        ["sts.csv:2", "UTF-8"],
    ),
    # ---- classification / clustering: labelled CSV
    "csv lacks label column": lambda t: (
        ev(t, clustering(t, "text,label\nhi,a\n")),
        ["c.csv:1", "lacks column(s) ['category']"],
    ),
    "csv option names no column": lambda t: (
        ev(t, clustering(t, LABELLED, "?text=body")),
        ["c.csv:1", "lacks column(s) ['body']"],
    ),
    "csv short row": lambda t: (
        ev(t, clustering(t, LABELLED + "lonely\n")),
        ["c.csv:4", "1 column(s)", "header has 2"],
    ),
    "csv unclosed quote": lambda t: (
        ev(t, clustering(t, 'text,category\n"hello,greet\nbye,leave\n')),
        ["c.csv:", "not a valid CSV row"],
    ),
    "csv header only": lambda t: (ev(t, clustering(t, "text,category\n")), ["c.csv", "holds no rows"]),
    "csv field too large": lambda t: (
        ev(t, clustering(t, BIG)),
        ["c.csv:2", "field larger than field limit"],
    ),
    "classification without train.csv": lambda t: (
        ev(t, classification(t)),
        ["cls/train.csv", "does not exist"],
    ),
    "classification one label": lambda t: (
        ev(t, classification(t, ONE_LABEL)),
        ["cls/train.csv", "one label only"],
    ),
    "classification of one file": lambda t: (
        ev(t, f"classification:{write(t / 'test.csv', LABELLED)}"),
        ["classification:", "?train=FILE"],
    ),
    "clustering folder without split": lambda t: (
        ev(t, f"clustering:{write(t / 'clu' / 'train.csv', LABELLED).parent}"),
        ["clu/test.csv", "does not exist"],
    ),
    # ---- reranking: JSONL and WikiQA TSV
    "rerank positive not a list": lambda t: (
        ev(t, rerank(t, '{"query": "q", "positive": "p", "negative": []}\n')),
        ["r.jsonl:1", "field 'positive'", "list of strings"],
    ),
    "rerank query missing": lambda t: (
        ev(t, rerank(t, RERANK + '{"positive": ["p"], "negative": []}\n')),
        ["r.jsonl:2", "field 'query' is missing"],
    ),
    "rerank tsv bad label": lambda t: (
        ev(t, rerank(t, "q\tgood\t1\nq\tbad\t2\n", "r.tsv")),
        ["r.tsv:2", "field 'label' (column 3)", "'2'"],
    ),
    "rerank tsv two columns": lambda t: (
        ev(t, rerank(t, "q\tgood\n", "r.tsv")),
        ["r.tsv:1", "field 'label'"],
    ),
    "rerank no positive": lambda t: (
        ev(t, rerank(t, '{"query": "q", "positive": [], "negative": ["n"]}\n')),
        ["r.jsonl", "no query has a positive candidate"],
    ),
    "rerank path is a folder": lambda t: (ev(t, f"reranking:{t}"), [str(t), "is a folder"]),
    # ---- the output folder
    "output dir holds other files": lambda t: (ev(t, sts(t)), [f"{t}/out", "holds files but no eval.json"]),
    "output dir of another model": lambda t: (
        ev(t, sts(t), out=evaluation(t, str(hf_model(t / "m")))),
        ["holds an evaluation of", f"{t}/m"],
    ),
    "slurm output path with a backslash": lambda t: (
        ev(t, sts(t), out=t / "o\\x") + ("--slurm",),
        ["backslash", "--output-dir"],
    ),
    "slurm output path with a newline": lambda t: (
        ev(t, sts(t), out=t / "o\nx") + ("--slurm",),
        ["control character", "--output-dir"],
    ),
    # ---- the other sub-commands
    "status of a non-evaluation": lambda t: (
        ("eval", "status", write(t / "x" / "a.txt").parent),
        [f"{t}/x", "no eval.json"],
    ),
    "status of a damaged manifest": lambda t: (
        ("eval", "status", write(evaluation(t) / MANIFEST, "{").parent),
        ["eval/eval.json", "cannot be read"],
    ),
    "status of a damaged status file": lambda t: (
        ("eval", "status", write(evaluation(t) / "status" / "Pairs.json", "[]").parent.parent),
        ["status/Pairs.json", "'state'"],
    ),
    "collect of a non-evaluation": lambda t: (("eval", "collect", t), [str(t), "no eval.json"]),
    "collect with zero poll": lambda t: (
        ("eval", "collect", evaluation(t), "--wait", "--poll", "0"),
        ["--poll"],
    ),
    "resubmit unknown task": lambda t: (
        ("eval", "resubmit", evaluation(t), "--task", "Nope"),
        ["no task 'Nope'", "Pairs"],
    ),
    "resubmit unclosed sbatch quote": lambda t: (
        ("eval", "resubmit", evaluation(t), "--sbatch", "--time='4:00"),
        ["--sbatch", "No closing quotation"],
    ),
    "compare missing folder": lambda t: (
        ("eval", "compare", t / "none"),
        [f"{t}/none", "no evaluation found"],
    ),
    "compare output exists": lambda t: (
        ("eval", "compare", evaluation(t), "--output", write(t / "table.md", "mine")),
        ["table.md", "exists; pass --overwrite"],
    ),
    "compare output inside an input": lambda t: (
        ("eval", "compare", evaluation(t), "--output", t / "eval" / MANIFEST, "--overwrite"),
        ["eval/eval.json", "lies inside the input"],
    ),
    "lengths of a non-retrieval task": lambda t: (
        lengths(t, "builtin:minilm", sts(t)),
        ["sts.jsonl", "needs a local retrieval task"],
    ),
    "lengths of a missing model": lambda t: (
        lengths(t, t / "nope", f"retrieval:{beir(t)}"),
        [f"{t}/nope", "no such model folder"],
    ),
    "lengths over existing outputs": lambda t: (
        lengths(t, "builtin:minilm", f"retrieval:{beir(t)}", out=write(t / "l" / "lengths.csv").parent),
        ["l/lengths.csv", "--overwrite"],
    ),
    "worker of a missing element": lambda t: (
        ("eval", "worker", evaluation(t), "--element", "5"),
        ["no array element 5"],
    ),
    "worker of a non-evaluation": lambda t: (
        ("eval", "worker", t, "--element", "0"),
        [str(t), "no eval.json"],
    ),
}
SETUP = {  # cases whose bad input is a change made after the builder wrote good files
    "corpus missing": lambda t: (t / "beir" / "corpus.jsonl").unlink(),
    "corpus is a folder": lambda t: (
        (t / "beir" / "corpus.jsonl").unlink(),
        (t / "beir" / "corpus.jsonl").mkdir(),
    ),
    "output dir holds other files": lambda t: write(t / "out" / "notes.txt", "mine"),
}


ENV = {k: v for k, v in proc_env().items() if k != "SFR_DS_DATA"} | {"HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_cleanly(case, tmp_path):
    t = tmp_path.resolve()
    args, says = CASES[case](t)
    if case in SETUP:
        SETUP[case](t)
    out = Path(args[args.index("--output-dir") + 1]) if "--output-dir" in args else None
    existed = out is not None and out.exists()
    refused(*args, where=t, says=[str(s) for s in says], env=ENV)
    assert out is None or out.exists() == existed, f"{out} was created"


def test_unknown_mteb_name_is_refused(tmp_path):
    """The one case that has to ask mteb (its import takes seconds)."""
    refused(*ev(tmp_path, "NoSuchTask"), where=tmp_path, says=["'NoSuchTask' is neither an MTEB task"])
    assert not (tmp_path / "out").exists()


def test_task_name_cannot_escape_the_evaluation(tmp_path):
    """``?name=../../x`` would have written status/../../x.json and results outside OUT."""
    data = write(tmp_path / "d" / "pairs.jsonl", STS_JSONL)
    out = tmp_path / "a" / "b" / "out"
    for name in ("../../x", "..%2F..%2Fx", "..", "a/b"):
        spec = f"sts:{data}?name={name}"
        refused(
            *("eval", "builtin:minilm", "--tasks", spec, "--output-dir", out), where=tmp_path, says=[spec]
        )
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [Path("d"), Path("d/pairs.jsonl")]


# ----------------------------------------------------------------------------- the job script

HOSTILE = ["ev x$(touch INJECTED)", "q'uo\"te `touch INJECTED` $HOME; %j & 100%"]


def python_in(folder: Path) -> str:
    """This venv's interpreter reached through ``folder`` (a path as hostile as the output's), so the
    script's interpreter path is tested too; outside a venv, the interpreter as it is."""
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    if sys.prefix == sys.base_prefix or not cfg.exists():
        return sys.executable
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").symlink_to(sys.executable)
    shutil.copy(cfg, folder / "pyvenv.cfg")
    (folder / "lib").symlink_to(Path(sys.prefix) / "lib")
    return str(folder / "bin" / "python")


def fake_sbatch(bin_dir: Path) -> Path:
    """An ``sbatch`` that records its arguments and answers job 4242, as --parsable does."""
    path = write(bin_dir / "sbatch", '#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/args"\necho 4242\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.mark.parametrize("hostile", HOSTILE)
def test_job_script_runs_the_worker_on_its_folder_and_nothing_else(hostile, tmp_path):
    """Spaces, quotes, $(...), backticks, $VAR and % in the output path and in the interpreter's:
    bash runs the written script (as an array element would); the worker gets exactly its folder
    (it records the element's failure there) and no injected command runs."""
    t = tmp_path.resolve()
    data = write(t / hostile / "data" / "pairs.jsonl", STS_JSONL)
    model = hf_model(t / hostile / "model")
    out = t / hostile / "out"
    python = python_in(t / hostile / "venv")
    fake_sbatch(t / "bin")
    env = dict(proc_env(), PATH=f"{t / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cmd = [python, "-m", "sfr_ds.cli", "eval", model, "--tasks", f"sts:{data}?name=Pairs", "--slurm"]
    p = run([*cmd, "--output-dir", out], env=env, timeout=120)
    assert "submitted job 4242" in p.stdout
    script = out / "slurm" / "eval.sbatch"
    assert (t / "bin" / "args").read_text().splitlines()[-1] == str(script)
    logs = str(out / "slurm" / "logs").replace("%", "%%").replace('"', '\\"')
    assert f'#SBATCH --output="{logs}/%A_%a.out"\n' in script.read_text()

    write(model / "retrained.txt", "new weights")  # the element then stops at once: model changed
    cwd = t / "cwd"
    cwd.mkdir()
    element = dict(env, SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID="0")
    p = run(["bash", script], cwd=cwd, env=element, check=False, timeout=120)
    ran = sorted({str(f) for f in [*t.rglob("INJECTED"), *cwd.iterdir(), *ROOT.glob("INJECTED")]})
    assert not ran, f"the script ran a command its paths held: {ran}"
    assert p.returncode == 1, p.stdout + p.stderr
    status = json.loads((out / "status" / "Pairs.json").read_text())
    assert status["state"] == "failed" and status["job"] == "4242_0", status
    assert "changed since" in status["error"] and str(out / MANIFEST) in status["error"]


def test_missing_eval_extra_says_how_to_install_it(tmp_path):
    """Without mteb (hidden from this process), `sfr-ds eval` names the extra, not a traceback."""
    hide = "import sys; sys.modules['mteb'] = None; from sfr_ds.cli import main; main()"
    p = run(
        [sys.executable, "-c", hide, "eval", "run", "builtin:minilm", "--tasks", sts(tmp_path)],
        env=ENV,
        check=False,
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "sfr-ds eval needs mteb, which is not installed: pip install 'sfr-ds[eval]'" in p.stderr
