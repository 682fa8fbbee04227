"""Galleries: 1:N search of enrolled faces (SQLite + faiss), open-set thresholds, clustering, the protocol.

``Gallery`` (kface.galleries.gallery) is the Python API behind ``kface enroll``, ``kface search`` and
``kface gallery``; ``store`` holds the SQLite source of truth, ``index`` the faiss index rebuilt from it,
``openset`` the FPIR/FNIR figures and thresholds, ``clustering`` ``kface cluster``, and ``protocol``
``kface benchmark identification``. Nothing here imports faiss, torch or scikit-learn until it is used.
"""
from .gallery import Candidate, EnrolmentReport, Gallery, SearchAnswer

__all__ = ["Candidate", "EnrolmentReport", "Gallery", "SearchAnswer"]
