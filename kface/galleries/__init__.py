"""Galleries: 1:N search of enrolled faces (SQLite + faiss), open-set thresholds, clustering.

``Gallery`` (kface.galleries.gallery) is the Python API behind ``kface enroll``, ``kface search`` and
``kface gallery``, and the one safe way to change a gallery from many processes at once; ``store`` holds
the SQLite source of truth, ``index`` the faiss index rebuilt from it, ``audit`` the log of every change,
``stored`` enrolment from stored vectors (``--embeddings``), ``openset`` the FPIR/FNIR figures and
thresholds, and ``clustering`` ``kface cluster``. Nothing here imports faiss, torch or scikit-learn
until it is used.
"""
from .gallery import Candidate, EnrolmentReport, Gallery, SearchAnswer

__all__ = ["Candidate", "EnrolmentReport", "Gallery", "SearchAnswer"]
