"""`python -m kface`: the same commands as `kface`."""
from .cli import main

main()
