"""Release recipes: the commands that train, export, quantise and measure the files kface ships (off every inference path)."""
