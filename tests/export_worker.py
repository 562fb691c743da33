"""Run by the tests under torchrun: train, recording the engine's trainable weights at every step.

    python -m torch.distributed.run --nproc-per-node N tests/export_worker.py CONFIG OUT.pt [key=value ...]

OUT.pt maps s -> the full trainable weights after s optimizer steps, for s = 0 .. total-1 (the hook
runs after the backward of step s+1, before its optimizer step), as ``engine.module_state`` gathers
them on every rank (under ZeRO-3 too).
"""

import sys

import torch

from sfr_ds import dist
from sfr_ds import engine as ds
from sfr_ds.config import load_config
from sfr_ds.train import train


def main():
    config, out, *overrides = sys.argv[1:]
    states = {}

    def record(engine, step):
        states[step - 1] = ds.module_state(engine)

    train(load_config(config, overrides), after_backward=record)
    if dist.info().is_main:
        torch.save(states, out)
    dist.cleanup()


if __name__ == "__main__":
    main()
