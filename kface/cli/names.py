"""The names the command line offers (backbones, detectors, datasets, unfreeze points, distances, engines).

Read from the registries' light modules so that no list is copied by hand and ``kface --help`` imports no torch."""
from __future__ import annotations

from ..backbones import BACKBONES, DEFAULT_BACKBONE, SHIPPED_NETWORK_MODULE
from ..backbones.cuts import CUT_POINTS
from ..datasets import ADAPTERS
from ..distances import DISTANCES
from ..engines import ENGINES
from ..faces.detect import DETECTORS, FALLBACKS

#: The default backbone first, then the others in the registry's order; the shipped models' networks
#: (module shipped_onnx) are left out, since those are chosen with --model NAME.
BACKBONE_NAMES: tuple[str, ...] = (DEFAULT_BACKBONE, *(
    name for name, spec in BACKBONES.items() if name != DEFAULT_BACKBONE and spec.module != SHIPPED_NETWORK_MODULE))
DETECTOR_NAMES: tuple[str, ...] = tuple(DETECTORS)
FALLBACK_NAMES: tuple[str, ...] = tuple(FALLBACKS)
UNFREEZE_NAMES: tuple[str, ...] = tuple(CUT_POINTS)
DISTANCE_NAMES: tuple[str, ...] = tuple(DISTANCES)
ENGINE_NAMES: tuple[str, ...] = tuple(ENGINES)

#: Layouts pairs can be asked of (make-pairs names those without identities itself, saying why not).
PAIR_SOURCE_DATASETS: tuple[str, ...] = tuple(kind for kind, adapter in ADAPTERS.items() if not adapter.attributes_only)
#: Layouts with identities to pair, train, benchmark or enroll.
IDENTITY_DATASETS: tuple[str, ...] = tuple(kind for kind in PAIR_SOURCE_DATASETS if ADAPTERS[kind].has_identities)
#: Layouts whose records carry age or gender labels (train-attributes).
ATTRIBUTE_DATASETS: tuple[str, ...] = tuple(kind for kind, adapter in ADAPTERS.items() if adapter.labels)
