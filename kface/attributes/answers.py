"""What every attribute model answers for a face from its probabilities (shared by trained and shipped models)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .labels import GENDERS, age_interval


def average_views(views: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of per-view (N, K) probabilities, renormalised in float64 so each row sums to 1 exactly
    (the networks compute in float32)."""
    mean = np.mean([np.asarray(view, dtype=np.float64) for view in views], axis=0)
    return mean / mean.sum(axis=1, keepdims=True)



class AttributeAnswers:
    """What every attribute model (a trained checkpoint, or the shipped ONNX heads) tells from its ``meta``,
    and the documented answer for one face from its probabilities."""

    meta: dict

    @property
    def tasks(self) -> list[str]:
        return list(self.meta["tasks"])

    @property
    def backbone(self) -> str:
        return self.meta["backbone"]

    @property
    def age_labels(self) -> list[str]:
        return list(self.meta["classes"].get("age", []))

    @property
    def group_ages(self) -> list[float]:
        return list(self.meta.get("group_ages") or [])

    @property
    def input(self) -> str:
        """What :meth:`probabilities` reads for a face: ``embeddings`` (the backbone's vector), or ``chips``
        (aligned chips, through ``chip_probabilities``: models whose own network layers start from the chip)."""
        return self.meta.get("input", "embeddings")

    @property
    def tta(self) -> str:
        """``flip`` when the model averages a face's probabilities with its mirror image's."""
        return self.meta.get("config", {}).get("tta", "none")

    def outside_albums(self, expected_age: float, interval: dict) -> dict:
        """For an adult face, the interval widened by the drift measured on photos unlike the training albums
        (the shipped model's card ``domain`` block); nothing where it was not measured."""
        domain = getattr(self, "domain", None)
        if not domain or expected_age < domain["adult_age"]:
            return {}
        low = max(0.0, round(interval["low"] - domain["outside_albums_extra_years"], 1))
        return {"age_interval_outside_albums": {**interval, "low": low, "why": domain["drifts"]}}

    def describe(self, probabilities: dict[str, np.ndarray], row: int) -> dict:
        """The documented answer for one face: age group with probabilities, gender with its probability."""
        answer: dict[str, Any] = {"age_group": None, "age_probs": None, "expected_age": None, "age_interval": None,
                                  "gender": None, "gender_prob": None, "gender_probs": None}
        if "age" in probabilities:
            probs = probabilities["age"][row]
            answer["age_group"] = self.age_labels[int(probs.argmax())]
            answer["age_probs"] = {label: float(p) for label, p in zip(self.age_labels, probs)}
            answer["expected_age"] = float(probs @ np.asarray(self.group_ages))
            if self.meta.get("age_bins"):
                answer["age_interval"] = age_interval(probs, self.meta["age_bins"], self.group_ages)
                answer.update(self.outside_albums(answer["expected_age"], answer["age_interval"]))
        if "gender" in probabilities:
            probs = probabilities["gender"][row]
            answer["gender"] = GENDERS[int(probs.argmax())]
            answer["gender_prob"] = float(probs.max())
            answer["gender_probs"] = {gender: float(p) for gender, p in zip(GENDERS, probs)}
        return answer
