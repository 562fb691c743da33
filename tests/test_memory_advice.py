"""A training step that runs out of memory names the setting to lower, and keeps the original error."""

import pytest
import torch
from conftest import TINY

from sfr_ds.config import load_config
from sfr_ds.guards import memory_advice


def too_big():
    torch.empty(1 << 50, dtype=torch.uint8)  # a real allocation failure (1 PiB), not a stand-in


@pytest.mark.parametrize(
    "overrides, names",
    [
        (["gradcache.packing=true", "gradcache.chunk_tokens=4096"], "gradcache.chunk_tokens (now 4096"),
        (["gradcache.packing=false", "gradcache.chunk_size=4"], "gradcache.chunk_size (now 4)"),
        (["gradcache.enabled=false"], "gradcache.enabled=true"),
    ],
)
def test_out_of_memory_names_the_setting(overrides, names):
    with pytest.raises(RuntimeError) as info, memory_advice(load_config(TINY, overrides)):
        too_big()
    message = str(info.value)
    assert names in message and "model.gradient_checkpointing=true" in message
    assert "can't allocate memory" in message  # the allocator's own words are kept
    assert "can't allocate memory" in str(info.value.__cause__)


def test_checkpointing_already_on_is_not_suggested_and_cuda_type_is_kept():
    cfg = load_config(TINY, ["model.gradient_checkpointing=true"])
    with pytest.raises(torch.cuda.OutOfMemoryError) as info, memory_advice(cfg):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "gradcache.chunk_size (now 4)" in str(info.value)
    assert "gradient_checkpointing" not in str(info.value)


def test_other_errors_pass_through_untouched():
    error = RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError) as info, memory_advice(load_config(TINY)):
        raise error
    assert info.value is error
