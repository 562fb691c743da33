"""The ``sfr-ds`` command line: each command reads its options and calls one function.

Every command lives in ``sfr_ds/commands/`` and imports its heavy dependencies (torch, deepspeed,
mteb) only when it runs, so ``sfr-ds --help`` and light commands stay fast.
"""

from __future__ import annotations

import click

from .commands import ablate, audit, demo, export, merge, mine, prepare, rounds, soup, train
from .commands import eval as eval_

COMMANDS = (
    train.command,
    prepare.command,
    mine.command,
    audit.command,
    eval_.command,
    merge.command,
    export.command,
    demo.command,
    ablate.command,
    rounds.command,
    soup.command,
)


@click.group()
@click.version_option(package_name="sfr-ds")
def main():
    """Train SFR-Embedding-Mistral-style text embedding models on DeepSpeed and Slurm."""


for _command in COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":
    main()
