"""Run by the tests under torchrun: train with a config, recording something after each backward.

    python -m torch.distributed.run --nproc-per-node N tests/train_worker.py WHAT CONFIG OUT.pt [k=v ...]

WHAT is ``grads`` (OUT.pt maps step s -> the full reduced gradients of step s) or ``weights``
(OUT.pt maps s -> the full trainable weights after s optimizer steps, s = 0 .. total-1: the hook
runs after the backward of step s+1, before its optimizer step). Both are gathered on every rank,
under ZeRO-3 too.
"""

import sys

import torch

from sfr_ds import dist
from sfr_ds.config import load_config
from sfr_ds.engine.training import trainable_state
from sfr_ds.train import train


def full_grads(engine) -> dict[str, torch.Tensor]:
    """Reduced gradients of the trainable parameters, whole, after backward (all ranks must call)."""
    from deepspeed.utils import safe_get_full_grad

    out = {}
    for n, p in engine.module.named_parameters():
        if p.requires_grad:
            g = safe_get_full_grad(p)
            out[n] = None if g is None else g.detach().float().cpu().clone()
    return out


def main():
    what, config, out, *overrides = sys.argv[1:]
    recorded = {}

    def record(engine, step):
        if what == "grads":
            recorded[step] = full_grads(engine)
        else:
            recorded[step - 1] = trainable_state(engine)

    train(load_config(config, overrides), after_backward=record)
    if dist.info().is_main:
        torch.save(recorded, out)
    dist.cleanup()


if __name__ == "__main__":
    main()
