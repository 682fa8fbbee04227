"""Analyzing faces with an attribute model (shipped ONNX heads or a trained checkpoint): :func:`load_analyzer`."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from ..embeddings.embedder import Embedder, face_fields
from ..errors import NoFaceError
from ..faces.detect import mirror
from ..faces.images import ImageSource, decode_image, read_bytes, source_name
from ..models.attributes import SHIPPED_NAME
from ..util.cache import CacheSetting
from .answers import AttributeAnswers
from .shipped import load_shipped_attributes


class Analyzer:
    """Age group and gender of the faces in an image, with an attribute model (shipped or trained).

    A model on the backbone's embedding reads it through the embedder (cached); one trained with
    ``tta="flip"`` averages each face's probabilities with its mirror image's, whose chip is embedded here
    (the cache holds the plain embedding only). A model that reads chips (the shipped one, ``--unfreeze``
    checkpoints) gets the aligned chip of the embedder's face stage (cached too) and runs its own network.
    """

    def __init__(self, model: AttributeAnswers, embedder: Embedder, model_path: str = ""):
        self.model = model
        self.embedder = embedder
        self.model_path = model_path

    def analyze(self, source: ImageSource, all_faces: bool = False) -> dict:
        """The answer for the largest face (``all_faces=False``) or for every face, largest first.

        Raises :class:`InputError` for an unreadable image, or one with no face unless the fallback is
        ``whole-image``.
        """
        name = source_name(source)
        common = {"image": name, "model": self.model_path, "backbone": self.model.backbone}
        if not all_faces and self.model.input == "chips":
            entries, _ = self.embedder.faces([source])
            face = entries[0]
            answer = self.model.describe(self.model.chip_probabilities(face.chip[None]), 0)
            return {**common, **answer, **face_fields(face.found, face.stage, face.box, face.n_faces)}
        if not all_faces:
            result = self.embedder.embed([source])
            mirrored = None
            if self.model.tta == "flip":
                entries, _ = self.embedder.faces([source])
                mirrored = self._mirrored([entries[0].chip])
            answer = self.model.describe(self.model.probabilities(result.embeddings, mirrored), 0)
            return {**common, **answer,
                    **face_fields(result.found[0], result.stages[0], result.boxes[0], result.n_faces[0])}
        faces = self._all_faces(source, name)
        chips = [face.chip for face in faces]
        if self.model.input == "chips":
            probabilities = self.model.chip_probabilities(np.stack(chips))
        else:
            embeddings = self.embedder.backbone.embed_chips(np.stack(chips))
            mirrored = self._mirrored(chips) if self.model.tta == "flip" else None
            probabilities = self.model.probabilities(embeddings, mirrored)
        listed = [{**self.model.describe(probabilities, i), "box": list(face.box), "stage": face.stage,
                   "found": face.found} for i, face in enumerate(faces)]
        return {**common, "n_faces": sum(face.found for face in faces), "faces": listed}

    def _mirrored(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        return self.embedder.backbone.embed_chips(mirror(np.stack(chips)))

    def _all_faces(self, source: ImageSource, name: str):
        kwargs = {"max_pixels": self.embedder.max_pixels} if self.embedder.max_pixels else {}
        image = decode_image(read_bytes(source), name, **kwargs)
        try:
            return self.embedder.finder.find_all(image, name)
        except NoFaceError:
            if self.embedder.settings.fallback != "whole-image":
                raise
            return [self.embedder.finder.whole_image(image)]

    def close(self) -> None:
        self.embedder.close()


def load_analyzer(model: Optional[str] = None, detector: Optional[str] = None, fallback: str = "none",
                  device: str = "auto", cache: Union[bool, CacheSetting] = True,
                  max_pixels: Optional[int] = None) -> Analyzer:
    """An :class:`Analyzer` for ``model``: a checkpoint from ``kface train-attributes``, or (None) the shipped
    Korean model (ONNX, no torch). The detector is the caller's or, when None, the model's own (the one
    it was trained with)."""
    if model is None:
        attribute_model = load_shipped_attributes(device)
        label = SHIPPED_NAME
    else:
        from .heads import load_attribute_model

        attribute_model = load_attribute_model(model, device)
        label = str(model)
    face = attribute_model.meta.get("face", {})
    embedder = Embedder(attribute_model.backbone, detector=detector or face.get("detector", "dlib"), fallback=fallback,
                        device=device, cache=cache, max_pixels=max_pixels)
    return Analyzer(attribute_model, embedder, label)
