"""Evaluation: overlap reports, sweeps, pair scoring and the LFW and Korean-family protocols."""
