"""The cut points where training splits a backbone's network in two (torch-free names only)."""
from __future__ import annotations

#: ``none``: nothing of the backbone trains; ``fc``: its final layer; ``last-block``: its last residual
#: block and after; ``last-stage``: its last stage and after; ``all``: every layer (GPU only).
CUT_POINTS = ("none", "fc", "last-block", "last-stage", "all")
#: Cuts whose prefix output is computed once and stored.
CACHED_CUTS = ("fc", "last-block", "last-stage")
#: Stored views of each image for the cached cuts: the chip, and the chip mirrored left-right.
VIEWS = 2
