"""Merge an sfr-ds run's LoRA into full weights; the same as ``sfr-ds merge``.

python tools/merge_lora.py RUN_OR_ADAPTER --out DIR [--dtype bf16] [--max-shard-size 2GB]
"""

from sfr_ds.commands.merge import command

if __name__ == "__main__":
    command(prog_name="merge_lora.py")
