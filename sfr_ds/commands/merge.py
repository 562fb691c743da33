"""``sfr-ds merge RUN_OR_ADAPTER --out DIR``: LoRA folded into full weights, verified, ready to serve."""

from __future__ import annotations

import re

import click

# the units transformers' ``save_pretrained(max_shard_size=...)`` knows, all in bytes
UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class ShardSize(click.ParamType):
    """A size such as 2GB, 500MB or 1GiB, as bytes; anything else is a usage error naming the option
    (checked before any weight is read, not after the first shard)."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+)\s*([KMG]I?B)\s*", str(value).upper())
        if not m or int(m[1]) == 0:
            self.fail(f"{value!r} is not a size such as 2GB, 500MB or 1GiB", param, ctx)
        return int(m[1]) * UNITS[m[2]]


@click.command("merge")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the merged model.")
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "bf16"]),
    default=None,
    help="Dtype of the merged weights (default: the run's model.dtype).",
)
@click.option(
    "--max-shard-size", type=ShardSize(), default="2GB", show_default=True, help="Largest safetensors shard."
)
@click.option(
    "--query-instruction",
    default=None,
    help="Instruction of the sentence-transformers 'query' prompt "
    "(default: 'Given a web search query, retrieve relevant passages that answer the query').",
)
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Compare merged and base + adapter embeddings of probe texts; fail above the tolerance.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=None,
    help="Largest max |difference| of the probe embeddings accepted (default: 1e-4 fp32, 5e-2 bf16).",
)
def command(source, out, dtype, max_shard_size, query_instruction, verify, tolerance):
    """Merge a run's (or an adapter folder's) LoRA into full weights in OUT.

    The base model is the one named in the run's sfr_ds.json. OUT holds safetensors shards, config,
    tokenizer and a sentence-transformers layout: SentenceTransformer(OUT).encode_query(...) gives
    the trained embeddings. An already merged source or OUT is left alone; any other non-empty OUT is
    refused. Every file of SOURCE and its base is checked readable before any work.
    """
    from ..merge import MergeError, merge

    try:
        report = merge(source, out, dtype, max_shard_size, query_instruction, verify, tolerance)
    except MergeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(report.message)
