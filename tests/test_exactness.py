"""Gradients are exact: W ranks == 1 rank over the same global batch, GradCache == plain.

Real processes under torchrun (gloo on CPU), DeepSpeed ZeRO-2, the tiny config (fp32, dropout 0).
Steps 1-3 of its plan cover both loss modes: retrieval (in-batch, gathered across ranks) and
classification (labels as documents, own negatives only).
"""

import json

import numpy as np
import pytest
from conftest import TINY, read_metrics, rel_diff, sfr_ds, torchrun_worker

pytestmark = pytest.mark.integration

STEPS = "optim.max_steps=3"
REL = 1e-5


@pytest.fixture(scope="module")
def grads(tmp_path_factory):
    d = tmp_path_factory.mktemp("exact")
    return {
        "w1": torchrun_worker(1, d / "w1.pt", STEPS, f"run.output_dir={d / 'w1'}"),
        "w2": torchrun_worker(2, d / "w2.pt", STEPS, f"run.output_dir={d / 'w2'}"),
        "w2_plain": torchrun_worker(
            2, d / "w2p.pt", STEPS, "gradcache.enabled=false", f"run.output_dir={d / 'w2p'}"
        ),
        "dirs": d,
    }


def test_steps_cover_both_loss_modes(grads):
    datasets = [m["dataset"] for m in read_metrics(grads["dirs"] / "w1")]
    assert "scifact" in datasets or "stsb" in datasets, datasets  # in-batch negatives
    assert "banking77" in datasets, datasets  # own negatives


def test_two_ranks_equal_one_rank(grads):
    for step in (1, 2, 3):
        a, b = grads["w1"][step], grads["w2"][step]
        assert set(a) == set(b) and all(v is not None for v in a.values())
        assert rel_diff(a, b) <= REL, f"step {step}: relative gradient difference {rel_diff(a, b):.2e}"
    m1, m2 = read_metrics(grads["dirs"] / "w1"), read_metrics(grads["dirs"] / "w2")
    for x, y in zip(m1, m2, strict=True):
        assert x["dataset"] == y["dataset"] and x["tokens"] == y["tokens"]
        assert x["loss"] == pytest.approx(y["loss"], rel=REL)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=REL)


def test_gradcache_equals_plain_under_zero2(grads):
    for step in (1, 2, 3):
        a, b = grads["w2_plain"][step], grads["w2"][step]
        assert rel_diff(a, b) <= REL, f"step {step}: relative gradient difference {rel_diff(a, b):.2e}"
    mp, mg = read_metrics(grads["dirs"] / "w2p"), read_metrics(grads["dirs"] / "w2")
    for x, y in zip(mp, mg, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=REL)


def test_gradients_are_not_trivially_equal(grads):
    """The comparison above would pass for zero gradients; make sure they are real and change."""
    g1, g2 = grads["w1"][1], grads["w1"][2]
    assert sum(float(v.abs().sum()) for v in g1.values()) > 1e-3
    assert rel_diff(g1, g2) > 1e-2


MATRYOSHKA = ("loss.matryoshka_dims=[64,16,4]", "loss.matryoshka_weights=[1,0.5,0.25]")


@pytest.fixture(scope="module")
def matryoshka(tmp_path_factory):
    """The same three runs with the loss summed over 64-, 16- and 4-dim prefixes."""
    d = tmp_path_factory.mktemp("matryoshka")
    runs = [("w1", 1, ()), ("w2", 2, ()), ("w2_plain", 2, ("gradcache.enabled=false",))]
    return {
        "dirs": d,
        **{
            name: torchrun_worker(
                n, d / f"{name}.pt", STEPS, *MATRYOSHKA, *extra, f"run.output_dir={d / name}"
            )
            for name, n, extra in runs
        },
    }


def test_matryoshka_is_exact_across_ranks_and_under_gradcache(matryoshka, grads):
    for step in (1, 2, 3):
        w1, w2, plain = (matryoshka[k][step] for k in ("w1", "w2", "w2_plain"))
        assert rel_diff(w1, w2) <= REL, f"step {step}: 1 vs 2 ranks {rel_diff(w1, w2):.2e}"
        assert rel_diff(plain, w2) <= REL, f"step {step}: GradCache vs plain {rel_diff(plain, w2):.2e}"
    # and the prefixes' terms are really in the gradient
    assert rel_diff(grads["w1"][1], matryoshka["w1"][1]) > 1e-2


def test_matryoshka_run_merges_into_a_folder_that_records_its_widths(matryoshka, tmp_path):
    """The merged folder names the trained widths, and sentence-transformers' truncate_dim gives
    the first 16 dimensions of sfr-ds's own embeddings."""
    from sentence_transformers import SentenceTransformer

    from sfr_ds.encode import TextEncoder

    run = matryoshka["dirs"] / "w2"
    sfr_ds("merge", run, "--out", tmp_path / "merged")
    st_config = json.loads((tmp_path / "merged" / "config_sentence_transformers.json").read_text())
    assert st_config["matryoshka_dims"] == [64, 16, 4]
    assert json.loads((tmp_path / "merged" / "sfr_ds.json").read_text())["matryoshka_dims"] == [64, 16, 4]
    docs = ["a first document about proteins", "the second one, longer, about cells and membranes"]
    ours = TextEncoder.from_run(run, device="cpu").encode_documents(docs)
    st = SentenceTransformer(str(tmp_path / "merged"), device="cpu", truncate_dim=16)
    np.testing.assert_allclose(st.encode_document(docs), ours[:, :16], atol=1e-5)


def test_cli_one_and_two_ranks_log_the_same_steps(tmp_path):
    """The README's command: metrics.jsonl of --nproc-per-node 2 and 1 agree step by step."""
    sfr_ds("train", TINY, "--output-dir", tmp_path / "n2", "--nproc-per-node", 2)
    sfr_ds("train", TINY, "--output-dir", tmp_path / "n1", "--nproc-per-node", 1)
    m2, m1 = read_metrics(tmp_path / "n2"), read_metrics(tmp_path / "n1")
    assert len(m1) == 6
    for x, y in zip(m1, m2, strict=True):
        assert x["step"] == y["step"] and x["dataset"] == y["dataset"]
        assert x["loss"] == pytest.approx(y["loss"], rel=REL)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=REL)
        assert set(x) >= {"step", "loss", "lr", "dataset", "grad_norm", "tokens", "seconds"}
    assert (tmp_path / "n2" / "final" / "adapter_model.safetensors").exists()
    assert list((tmp_path / "n2" / "tensorboard").glob("events.*"))
    assert [(r["dataset"], r["tokens"]) for r in m2] == planned_steps(TINY, len(m2))


def planned_steps(config, n: int) -> list[tuple[str, int]]:
    """(dataset, real tokens) of the plan's steps 0..n-1, built one by one without the training loop:
    the loop's prefetch must hand each step its own batch."""
    from sfr_ds.config import load_config
    from sfr_ds.data.batch import NegativeDrawer, build_text_batch
    from sfr_ds.data.load import group_by_dataset, load_training_data
    from sfr_ds.data.sampler import BatchPlan
    from sfr_ds.data.tokens import tokenize
    from sfr_ds.model import load_tokenizer

    cfg = load_config(config)
    data = cfg.data
    records = load_training_data(data.train_files)
    plan = BatchPlan(
        group_by_dataset(records), data.global_batch_size, homogeneous=data.homogeneous, seed=data.seed
    )
    drawer = NegativeDrawer(records, data.hard_negatives, data.short_negatives, data.seed)
    tok, eos, out = load_tokenizer(cfg.model), cfg.model.appends_eos, []
    for step in range(n):
        gb = plan.batch(step)
        batch = build_text_batch(records, gb.indices, gb.epoch, drawer)
        real = (
            tokenize(tok, batch.queries, data.query_max_len, eos).n_tokens
            + tokenize(tok, batch.docs, data.doc_max_len, eos).n_tokens
        )
        out.append((gb.dataset or "mixed", real))
    return out
