"""Side by side with sentence-transformers: the same fine-tune, the same data, the same ranks.

Both tools train SmolLM2-135M (``builtin:smollm2-135m``) with LoRA r=8 on every linear layer from
one saved initial adapter, last-token pooling with EOS, queries as ``Instruct: ...\\nQuery: ...``,
on the demo's records and MiniLM-mined hard negatives, with the same global batch, hard negatives
per query, lengths, AdamW, learning-rate schedule (sfr-ds's, passed to sentence-transformers'
trainer), clipping, steps and temperature (scale = 1 / temperature), on ``--nproc`` CPU ranks:
sfr-ds under DeepSpeed ZeRO-2 with packed GradCache chunks of ``chunk_tokens`` real tokens,
sentence-transformers under torchrun (DDP, gloo) with ``CachedMultipleNegativesRankingLoss``
(``mini_batch_num_tokens`` = the same budget, ``gather_across_devices=True``) and its trainer.

  Run A  identical objective: the SciFact records only, the very batches sfr-ds plans (texts and
         negatives taken from its plan), sfr-ds's duplicate masking off and one length for
         queries and documents (sentence-transformers truncates both alike): both compute the same
         InfoNCE over the global batch. Step 1's loss and grad_norm are compared (the grad_norm
         also checks that both start from the same LoRA initialisation). ``--seeds`` seeds. Both
         start from the demo's trained model (merged), as the ablation rows do: from the untrained
         SmolLM2, SciFact alone at the demo's learning rate collapses (every score equal, the loss
         at ln 32) in both tools alike, and a lower rate (1e-4) diverged in 10 steps.
  Run B  each tool's own recipe on the whole bundle (SciFact, STS-B, Banking77): sfr-ds as the
         demo trains (task-homogeneous global batches, labels-as-documents with own negatives);
         sentence-transformers with its multi-dataset batch sampler (proportional, each rank's
         batch from one dataset), the no-duplicates batch sampler its docs advise for in-batch
         negatives, one cached MNRL loss for every task. ``--seeds-b`` seeds (default: the first
         of ``--seeds``). ``--diagnose`` adds Run B changed one way at a time (``DIAGNOSES``):
         sfr-ds with sentence-transformers' kind of batches (``data.homogeneous_scope: rank``) and
         sentence-transformers fed sfr-ds's, which is how the recipes' gap was traced to batching.

Per tool: seconds per step (median after ``--warmup`` steps; a step is the time between two step
ends, input included, as sfr-ds's metrics count it), real tokens per second (non-padding tokens of
the global batch over those steps), peak RSS of the largest rank (the children's ``ru_maxrss`` of
a wrapper process: the same measurement for both), wall time of the training command, and the
trained model's scores on the bundled ``mini`` suite, both scored by the same ``sfr-ds eval``
(sentence-transformers' adapter goes into a copy of sfr-ds's adapter folder, same keys).

    pip install -e ".[bench,mining,eval,models]"
    python benchmarks/vs_sentence_transformers.py                  # A x 3 seeds + B, ~90 min on 2 cores
    python benchmarks/vs_sentence_transformers.py --runs A --seeds 0 --steps 6 --no-eval   # quick

Everything lands under ``--out`` (default runs/vs_st); finished pieces are reused when run again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()
CONFIG = ROOT / "configs" / "demo.yaml"
EVAL_ARGS = ["--suite", "mini", "--query-max-len", "64", "--doc-max-len", "128"]  # the demo's
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
ENV["TOKENIZERS_PARALLELISM"] = "false"


def sh(cmd: list, **kw) -> None:
    print("  $", " ".join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), check=True, env={**os.environ, **ENV}, **kw)


# ----------------------------------------------------------------------------- the data and configs


def demo_run(demo: Path, out: Path) -> tuple[Path, Path, Path]:
    """(all mined records, the SciFact ones, the demo's merged model): ``sfr-ds demo``'s own
    prepare, mine, train and merge stages (its evaluations skipped), each skipped when done."""
    from sfr_ds.demo import DemoOptions, stages
    from sfr_ds.pipeline import run_local

    prepare, mine, _, train, merge, _ = stages(demo, DemoOptions(), gpus=0)
    run_local([prepare, mine, train, merge], "demo")
    mined, scifact = demo / "data" / "mined.jsonl", out / "data" / "scifact.jsonl"
    if not scifact.exists():
        scifact.parent.mkdir(parents=True, exist_ok=True)
        lines = [line for line in mined.read_text().splitlines() if json.loads(line)["dataset"] == "scifact"]
        scifact.write_text("".join(line + "\n" for line in lines))
    return mined, scifact, demo / "merged"


def write_config(path: Path, overrides: list[str]) -> Path:
    """The resolved training config both tools read."""
    from sfr_ds.config import dump_config, load_config

    path.parent.mkdir(parents=True, exist_ok=True)
    dump_config(load_config(CONFIG, overrides), path)
    return path


def run_overrides(run: str, data: Path, seed: int, a: argparse.Namespace) -> list[str]:
    steps = a.steps
    common = [f"data.train_files=[{data}]", f"run.seed={seed}", f"data.seed={seed}"]
    if run == "A":  # from the demo's model: from the untrained one SciFact alone collapses (see docstring)
        common.append(f"model.name_or_path={a.start}")
    if a.chunk_tokens:  # GradCache's budget, for both tools
        common.append(f"gradcache.chunk_tokens={a.chunk_tokens}")
    common += [f"optim.max_steps={steps}", "optim.epochs=1000"]  # steps decide, not epochs
    common += [f"run.save_every={steps}", "run.tensorboard=false"]
    if run == "A":  # one objective: sentence-transformers has one length and no duplicate mask
        return [*common, "data.query_max_len=64", "data.doc_max_len=64", "loss.mask_duplicates=false"]
    return common


def save_initial_adapter(cfg_path: Path, out: Path) -> None:
    """The LoRA initialisation sfr-ds's training builds (same seed, same calls), saved for both."""
    import torch

    from sfr_ds.config import load_config
    from sfr_ds.model import build_embedder, load_tokenizer

    if (out / "adapter_model.safetensors").exists():
        return
    cfg = load_config(cfg_path)
    torch.manual_seed(cfg.run.seed)  # as sfr_ds.train.build_engine
    load_tokenizer(cfg.model)
    model = build_embedder(cfg.model, cfg.lora, packed=cfg.gradcache.packing)
    model.backbone.save_pretrained(str(out))


# ----------------------------------------------------------------------------- measuring


def peak(argv: list[str]) -> None:
    """``peak OUT.json -- CMD...``: run CMD; record its wall time and its largest process's peak RSS."""
    out, cmd = Path(argv[0]), argv[2:]
    t0 = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
    cpu_s = usage.ru_utime + usage.ru_stime  # every rank's, start-up included: robust to a busy machine
    if rc == 0:
        out.write_text(json.dumps({"wall_s": wall, "cpu_s": cpu_s, "peak_rss_mb": rss_mb}))
    sys.exit(rc)


def measured(cmd: list, out: Path) -> dict:
    if not out.exists():
        sh([sys.executable, THIS, "peak", out, "--", *cmd])
    return json.loads(out.read_text())


def step_stats(metrics: Path, warmup: int) -> dict:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    timed = rows[warmup:]
    return {
        "step1_loss": rows[0]["loss"],
        "step1_grad_norm": rows[0]["grad_norm"],
        "final_loss": rows[-1]["loss"],
        "s_per_step": statistics.median(r["seconds"] for r in timed),
        "tokens_per_s": sum(r["tokens"] for r in timed) / sum(r["seconds"] for r in timed),
        "tokens_per_step": statistics.mean(r["tokens"] for r in timed),
    }


def evaluate(model: Path, out: Path) -> dict:
    if not (out / "summary.json").exists():
        sh([sys.executable, "-m", "sfr_ds.cli", "eval", "run", model, "--output-dir", out, *EVAL_ARGS])
    summary = json.loads((out / "summary.json").read_text())
    return {**summary["tasks"], "AVG": summary["AVG"]}


# ----------------------------------------------------------------------------- one pair of runs


def train_pair(run: str, seed: int, data: Path, a: argparse.Namespace) -> dict:
    """sfr-ds, then sentence-transformers, on one config; their step figures, memory and scores."""
    where = a.out / run / f"seed{seed}"
    cfg = write_config(where / "config.yaml", run_overrides(run, data, seed, a))
    init = where / "init_adapter"
    sh([sys.executable, THIS, "init", cfg, init])
    sfr_run, st_run = where / "sfr-ds", where / "st"
    sfr_cmd = [sys.executable, "-m", "sfr_ds.cli", "train", cfg, "--output-dir", sfr_run]
    st_cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", a.nproc]
    st_cmd += ["--master_port", str(29500 + seed + (50 if run == "B" else 0)), THIS, "st-train"]
    st_cmd += ["planned" if run == "A" else "tasks", cfg, init, st_run, sfr_run / "final"]
    result = {}
    for tool, cmd, metrics in (
        ("sfr-ds", [*sfr_cmd, "--nproc-per-node", a.nproc], sfr_run / "metrics.jsonl"),
        ("st", st_cmd, st_run / "metrics.jsonl"),
    ):
        got = measured(cmd, where / f"{tool}.peak.json")
        got.update(step_stats(metrics, a.warmup))
        result[tool] = got
    if not a.no_eval:
        st_model = st_run / "adapter"
        result["sfr-ds"]["scores"] = evaluate(sfr_run, where / "eval-sfr-ds")
        result["st"]["scores"] = evaluate(st_model, where / "eval-st")
    return result


# Run B changed in one way, one tool, the first seed: which difference between the two recipes moves
# the score. (tool, sfr-ds config overrides, how sentence-transformers is fed)
DIAGNOSES = {
    "sfr-ds, each rank's share one task (st's batching)": ("sfr-ds", ["data.homogeneous_scope=rank"], None),
    "st, fed sfr-ds's batches (whole batch one task)": ("st", [], "planned"),
}


def diagnose(name: str, seed: int, data: Path, a: argparse.Namespace) -> dict:
    """One diagnostic row: trained, scored, and its first and last loss."""
    tool, overrides, feed = DIAGNOSES[name]
    pair = a.out / "B" / f"seed{seed}"
    where = pair / "diag" / "".join(c if c.isalnum() else "-" for c in name).strip("-")
    cfg = write_config(where / "config.yaml", run_overrides("B", data, seed, a) + overrides)
    if tool == "sfr-ds":
        cmd = [sys.executable, "-m", "sfr_ds.cli", "train", cfg, "--output-dir", where / "run"]
        cmd += ["--nproc-per-node", a.nproc]
        model = where / "run"
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", a.nproc]
        cmd += ["--master_port", str(29600 + seed), THIS, "st-train", feed, cfg, pair / "init_adapter"]
        cmd += [where / "run", pair / "sfr-ds" / "final"]
        model = where / "run" / "adapter"
    got = measured(cmd, where / "peak.json")
    got.update(step_stats(where / "run" / "metrics.jsonl", a.warmup))
    got["scores"] = evaluate(model, where / "eval")
    return {"tool": tool, **got}


def diagnosis_table(rows: dict, base: dict) -> str:
    """Each diagnostic row's step-1 loss and scores beside Run B's two tools (first seed)."""
    tasks = list(base["sfr-ds"]["scores"])
    lines = ["| Run B, changed | tool | step-1 loss | " + " | ".join(tasks) + " |"]
    lines.append("|---" * (len(tasks) + 3) + "|")
    every = [("as is", base[tool] | {"tool": tool}) for tool in ("sfr-ds", "st")] + list(rows.items())
    for name, r in every:
        scores = " | ".join(f"{r['scores'][t]:.2f}" for t in tasks)
        lines.append(f"| {name} | {r['tool']} | {r['step1_loss']:.2f} | {scores} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- sentence-transformers side


def st_train(argv: list[str]) -> None:
    """One torchrun rank of sentence-transformers' trainer on the config's data (see the docstring)."""
    import torch
    import torch.distributed as tdist
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
        modules,
    )

    from sfr_ds.config import load_config
    from sfr_ds.data.tokens import adds_eos
    from sfr_ds.engine.training import optimizer_and_schedule
    from sfr_ds.merge.layout import write_tokenizer
    from sfr_ds.model import load_tokenizer
    from sfr_ds.zoo import resolve_model_path

    feed, cfg_path, init, out, layout = argv[0], Path(argv[1]), Path(argv[2]), Path(argv[3]), Path(argv[4])
    cfg = load_config(cfg_path)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    max_len = max(cfg.data.query_max_len, cfg.data.doc_max_len)
    base = resolve_model_path(cfg.model.name_or_path)
    tokenizer = out / "tokenizer"  # sfr-ds's EOS rule, kept by the tokenizer itself
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        eos = cfg.model.appends_eos and not adds_eos(load_tokenizer(cfg.model))  # a merged model's does
        write_tokenizer(Path(base), tokenizer, {"append_eos": eos, "doc_max_len": max_len})
    else:
        while not (tokenizer / "tokenizer.json").exists():
            time.sleep(0.2)
    torch.manual_seed(cfg.run.seed)
    transformer = modules.Transformer(
        base,
        max_seq_length=max_len,
        tokenizer_name_or_path=str(tokenizer),
        model_kwargs={"dtype": torch.float32},
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings",
    )
    transformer.model.config.use_cache = False
    transformer.model = PeftModel.from_pretrained(transformer.model, str(init), is_trainable=True)
    width = transformer.model.config.hidden_size
    model = SentenceTransformer(
        modules=[transformer, modules.Pooling(width, pooling_mode="lasttoken"), modules.Normalize()],
        device="cpu",
    )
    loss = losses.CachedMultipleNegativesRankingLoss(
        model,
        scale=1 / cfg.loss.temperature,
        mini_batch_size=cfg.gradcache.chunk_size,
        mini_batch_num_tokens=cfg.gradcache.chunk_tokens,
        gather_across_devices=True,
    )
    dataset, sampler = st_dataset(feed, cfg, world)
    steps = cfg.optim.max_steps
    opt, sched = optimizer_and_schedule(model, cfg, steps)  # sfr-ds's own, by construction
    extra = {"batch_sampler": sampler} if sampler else {"batch_sampler": "no_duplicates"}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=cfg.data.global_batch_size // world,
        max_steps=steps,
        max_grad_norm=cfg.optim.grad_clip,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        ddp_backend="gloo",
        dataloader_drop_last=True,
        seed=cfg.run.seed,
        disable_tqdm=True,
        **extra,
    )
    counter, timer = counting_collator(model), step_timer()
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=loss,
        optimizers=(opt, sched),
        callbacks=[timer],
        data_collator=counter,
    )
    trainer.train()
    tokens = torch.tensor(counter.counts[:steps], dtype=torch.long)
    tdist.all_reduce(tokens)  # the global batch's real tokens
    if rank == 0:
        rows = [h for h in trainer.state.log_history if "loss" in h]
        metrics = [
            {
                "step": i + 1,
                "loss": h["loss"],
                "grad_norm": h.get("grad_norm"),
                "lr": h.get("learning_rate"),
                "tokens": int(tokens[i]),
                "seconds": timer.seconds[i],
            }
            for i, h in enumerate(rows)
        ]
        (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
        shutil.copytree(layout, out / "adapter", dirs_exist_ok=True)  # sfr-ds's, with st's weights
        model[0].model.save_pretrained(str(out / "st_adapter"))
        check_same_keys(out / "st_adapter", out / "adapter")
        weights = "adapter_model.safetensors"
        shutil.copy(out / "st_adapter" / weights, out / "adapter" / weights)
    tdist.barrier()


def check_same_keys(a: Path, b: Path) -> None:
    from safetensors import safe_open

    keys = [set(safe_open(str(p / "adapter_model.safetensors"), "pt").keys()) for p in (a, b)]
    if keys[0] != keys[1]:
        raise SystemExit(f"adapter keys differ: {sorted(keys[0] ^ keys[1])[:5]}")


def st_dataset(feed: str, cfg, world: int):
    """``planned`` (Run A): the rows of sfr-ds's planned batches in its order, fed in that order
    (accelerate gives rank r the r-th per-rank slice of each global batch). ``tasks`` (Run B): one
    dataset per task, the records with the negatives sfr-ds draws for epoch 0, sampled the
    sentence-transformers way."""
    from datasets import Dataset, DatasetDict
    from torch.utils.data import BatchSampler, SequentialSampler

    from sfr_ds.data.batch import build_text_batch
    from sfr_ds.data.step_inputs import TrainingData
    from sfr_ds.data.tokens import format_query

    data = TrainingData.load(cfg)
    k = cfg.data.hard_negatives
    columns = ["anchor", "positive", *[f"negative_{j + 1}" for j in range(k)]]
    if feed == "planned":
        rows = {c: [] for c in columns}
        for step in range(data.total_steps):
            gb = data.plan.batch(step)
            batch = build_text_batch(data.records, gb.indices, gb.epoch, data.drawer)
            rows["anchor"] += batch.queries
            for j, c in enumerate(columns[1:]):
                rows[c] += batch.docs[j :: batch.group]

        def in_order(dataset, batch_size, drop_last, **_):
            return BatchSampler(SequentialSampler(dataset), batch_size, drop_last)

        return Dataset.from_dict(rows), in_order
    by_task: dict[str, dict] = {}
    for i, r in enumerate(data.records):
        rows = by_task.setdefault(r.dataset, {c: [] for c in columns})
        rows["anchor"].append(format_query(r.query, r.instruction))
        for c, text in zip(columns[1:], [r.pos[0], *data.drawer.draw(i, 0)]):
            rows[c].append(text)
    return DatasetDict({name: Dataset.from_dict(rows) for name, rows in by_task.items()}), None


def step_timer():
    """Seconds per step as sfr-ds counts them: from one step's end to the next (input included)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.last = [], 0.0

        def on_train_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.seconds.append(round(now - self.last, 4))
            self.last = now

    return StepTimer()


def counting_collator(model):
    """sentence-transformers' collator that also counts each batch's real tokens on this rank."""
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    class CountingCollator(SentenceTransformerDataCollator):
        counts: list

        def __call__(self, features):
            batch = super().__call__(features)
            self.counts.append(int(sum(v.sum() for k, v in batch.items() if k.endswith("attention_mask"))))
            return batch

    collator = CountingCollator(preprocess_fn=model.preprocess)
    collator.counts = []
    return collator


# ----------------------------------------------------------------------------- the report


def ratio_table(results: dict, runs: list[str]) -> str:
    cols = ["Run", "seed", "tool", "s/step", "tokens/s", "peak RSS MB", "train wall s", "train CPU s"]
    cols += ["step-1 loss", "step-1 grad_norm"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for key, pair in results.items():
        run, seed = key.split("/")
        for tool in ("sfr-ds", "st"):
            r = pair[tool]
            lines.append(
                f"| {run} | {seed} | {tool} | {r['s_per_step']:.2f} | {r['tokens_per_s']:.0f} | "
                f"{r['peak_rss_mb']:.0f} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | "
                f"{r['step1_loss']:.5f} | {r['step1_grad_norm']:.5f} |"
            )
    lines += [
        "",
        "| Run | tokens/s sfr-ds / st | CPU s st / sfr-ds | peak RSS sfr-ds / st | step-1 loss rel. diff |",
    ]
    lines.append("|---|---|---|---|---|")
    for run in runs:
        pairs = [p for k, p in results.items() if k.startswith(run + "/")]
        ours, theirs = [p["sfr-ds"] for p in pairs], [p["st"] for p in pairs]
        tps = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(ours, theirs)]
        cpu = [b["cpu_s"] / a["cpu_s"] for a, b in zip(ours, theirs)]
        mem = [a["peak_rss_mb"] / b["peak_rss_mb"] for a, b in zip(ours, theirs)]
        rel = [abs(a["step1_loss"] - b["step1_loss"]) / abs(b["step1_loss"]) for a, b in zip(ours, theirs)]
        lines.append(f"| {run} | {spread(tps)}x | {spread(cpu)}x | {spread(mem)}x | {max(rel):.1e} |")
    if all("scores" in p["sfr-ds"] for p in results.values()):
        lines += ["", quality_table(results, runs)]
    return "\n".join(lines)


def spread(xs: list[float], digits: int = 2) -> str:
    m = statistics.mean(xs)
    return f"{m:.{digits}f}" + (f" ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else "")


def quality_table(results: dict, runs: list[str]) -> str:
    """Every mini-suite score: mean ± sd over seeds per tool, and Δ (sfr-ds - st) with its sd."""
    tasks = list(next(iter(results.values()))["sfr-ds"]["scores"])
    lines = ["| Run | score | sfr-ds | sentence-transformers | Δ sfr-ds - st |", "|---|---|---|---|---|"]
    for run in runs:
        pairs = [p for k, p in results.items() if k.startswith(run + "/")]
        for t in tasks:
            a = [p["sfr-ds"]["scores"][t] for p in pairs]
            b = [p["st"]["scores"][t] for p in pairs]
            d = [x - y for x, y in zip(a, b)]
            lines.append(f"| {run} | {t} | {spread(a)} | {spread(b)} | {spread(d)} |")
    return "\n".join(lines)


def versions() -> str:
    import deepspeed
    import peft
    import sentence_transformers
    import torch
    import transformers

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, "
        f"transformers {transformers.__version__}, peft {peft.__version__}, "
        f"sentence-transformers {sentence_transformers.__version__}"
    )


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "vs_st")
    p.add_argument("--demo", type=Path, help="a finished `sfr-ds demo` folder (default: OUT/demo, made)")
    p.add_argument("--runs", default="A,B", help="A (identical objective), B (each tool's recipe)")
    p.add_argument("--seeds", default="0,1,2", help="Run A's seeds; Run B uses the first unless --seeds-b")
    p.add_argument("--steps", type=int, default=24, help="optimizer steps (the demo's 24)")
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--chunk-tokens", type=int, help="GradCache real tokens per mini-batch (default 1024)")
    p.add_argument("--no-eval", action="store_true", help="skip the mini-suite scores")
    p.add_argument("--seeds-b", help="Run B's seeds (default: the first of --seeds)")
    p.add_argument("--diagnose", action="store_true", help="also Run B changed one way at a time (DIAGNOSES)")
    a = p.parse_args(argv)
    runs, seeds = a.runs.split(","), [int(s) for s in a.seeds.split(",")]
    mined, scifact, a.start = demo_run(a.demo or a.out / "demo", a.out)
    results = {}
    seeds_b = [int(s) for s in a.seeds_b.split(",")] if a.seeds_b else seeds[:1]
    pairs = [(run, (seeds if run == "A" else seeds_b)[0]) for run in runs]
    pairs += [("A", s) for s in seeds[1:] if "A" in runs] + [("B", s) for s in seeds_b[1:] if "B" in runs]
    diag = {}
    for i, (run, seed) in enumerate(pairs):  # one of each first: the seeds' repeats come last
        results[f"{run}/{seed}"] = train_pair(run, seed, scifact if run == "A" else mined, a)
        (a.out / "results.json").write_text(json.dumps(results, indent=1))
        if a.diagnose and not a.no_eval and i == len(runs) - 1 and "B" in runs:  # before the repeats
            diag = {name: diagnose(name, seeds_b[0], mined, a) for name in DIAGNOSES}
            (a.out / "diagnoses.json").write_text(json.dumps(diag, indent=1))
    report = f"{versions()}\n\n{ratio_table(results, runs)}\n"
    if diag:
        report += f"\n{diagnosis_table(diag, results[f'B/{seeds_b[0]}'])}\n"
    (a.out / "report.md").write_text(report)
    print(report)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "peak":
        peak(sys.argv[2:])
    elif cmd == "init":
        save_initial_adapter(Path(sys.argv[2]), Path(sys.argv[3]))
    elif cmd == "st-train":
        st_train(sys.argv[2:])
    else:
        main(sys.argv[1:])
