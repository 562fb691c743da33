"""Evaluation: MTEB and local tasks through the training encode path, here or on Slurm.

models.py   which model, how it reads texts (instruction policy, pooling, lengths); no torch until load
encoder.py  the mteb 2.x encoder over ``sfr_ds.encode.TextEncoder``
cache.py    embeddings cached per (model, task, split), keyed by the exact text read
specs.py    task specs: MTEB names/benchmarks and KIND:PATH?options for local files
readers.py  local task files -> checked rows (errors name file:line and field)
tasks.py    local data as custom mteb tasks, MTEB tasks by name
runner.py   an evaluation folder: manifest, running tasks, per-task status
suite.py    named suites (the SFR dev report) and the result tables
slurm.py    job arrays with sbatch; status, waiting and re-submission
length_analysis.py  rank difference of the gold document against query/document length

See docs/eval.md.
"""
