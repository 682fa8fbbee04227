"""Release recipes: the commands that train, export, quantise and measure the files kface ships.

Off every inference path: nothing a user runs to verify, embed or search imports this package."""
