"""DeepSpeed, and only here: ``training`` builds the engine and takes its optimizer steps,
``checkpoints`` saves, resumes and reads checkpoints (safely). Importing the package loads nothing:
deepspeed, and the settings it needs on a CPU machine, load on first use (``backend``)."""
