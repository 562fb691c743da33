"""sfr-ds: train SFR-Embedding-Mistral-style text embedding models on DeepSpeed and Slurm."""

__version__ = "0.1.0"
