"""Run by the tests under torchrun: train with a config and record each step's full gradients.

python -m torch.distributed.run --nproc-per-node N tests/dist_worker.py CONFIG OUT.pt [key=value ...]
"""

import sys

import torch

from sfr_ds import dist
from sfr_ds import engine as ds
from sfr_ds.config import load_config
from sfr_ds.train import train


def main():
    config, out, *overrides = sys.argv[1:]
    grads = {}

    def record(engine, step):
        grads[step] = ds.full_grads(engine)

    train(load_config(config, overrides), after_backward=record)
    if dist.info().is_main:
        torch.save(grads, out)
    dist.cleanup()


if __name__ == "__main__":
    main()
