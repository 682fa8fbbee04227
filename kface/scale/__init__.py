"""Dataset-scale work: a dataset into a Parquet dataset of embeddings, on this machine or on Ray Data.

:mod:`.batches` holds the per-batch work and the one-machine driver, :mod:`.embed` the same work in Ray
actors, :mod:`.cluster` the connection; the dataset's format is :mod:`kface.embeddings.parquet`.
Ray and pyarrow are imported only inside functions (``kface --help`` and ``verify`` never load them).
"""
