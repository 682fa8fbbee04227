"""Verification pairs: the pair-file format (:mod:`.files`) and the sampler that makes pair files (:mod:`.sampling`).

A pair file is a CSV with the header ``split,path_a,path_b,label,identity_a,identity_b`` with a JSON manifest
beside it (see ``pairs/README.md``); :func:`make_pair_file` samples one from a dataset index.
"""
from .files import (
                    DEFAULT_FOLDER,
                    DEFAULT_SPLIT,
                    FORMAT,
                    FORMAT_VERSION,
                    HEADER,
                    SPLITS,
                    PairRequest,
                    PairSet,
                    Ratio,
                    default_out_path,
                    parse_ratio,
                    parse_split,
                    read_pairs,
                    write_pairs,
)
from .sampling import (
                    HARD_NEGATIVE_KEYS,
                    identity_groups,
                    make_pair_file,
                    require_identities,
                    sample_pairs,
                    split_groups,
)

__all__ = ["DEFAULT_FOLDER", "DEFAULT_SPLIT", "FORMAT", "FORMAT_VERSION", "HARD_NEGATIVE_KEYS", "HEADER", "SPLITS",
           "PairRequest", "PairSet", "Ratio", "default_out_path", "identity_groups", "make_pair_file", "parse_ratio",
           "parse_split", "read_pairs", "require_identities", "sample_pairs", "split_groups", "write_pairs"]
