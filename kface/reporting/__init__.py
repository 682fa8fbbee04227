"""Plots, markdown and subgroup tables shared by the evaluation and attribute reports."""
