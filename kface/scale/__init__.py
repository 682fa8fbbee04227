"""Dataset-scale work on Ray Data: embedding a dataset into Parquet, and the folds of a benchmark, as Ray jobs.

Ray is imported only inside these functions (``kface --help`` and ``verify`` never load it); the
per-batch work is the single-machine code (:mod:`kface.dataset_embedding`), run in Ray actors.
"""
