"""Age group and gender: labels, heads, training, the analyzer and its report."""
