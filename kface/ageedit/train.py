"""Training the age editor (``kface train-age-editor``): losses, the loop, checkpoints, resuming.

Each step draws a batch of real chips ``x`` with their age classes ``a`` (classes weighted by the inverse
square root of their size, so the few children and elderly come up more often) and a random other target
class ``t`` per chip, then:

- editor: reconstruction ``L1(G(x, a), x)``; cycle ``L1(G(G(x, t), a), x)``; age cross-entropy of the
  classifier on real chips (trains it) and on the edits (through a frozen copy of encoder and classifier,
  so the edits must look their target age to the classifier rather than the classifier learning to read
  the edits); adversarial (hinge) against the discriminator at class ``t``; perceptual and identity losses
  from the frozen dlib face network kface ships (VGG and LPIPS weights do not install offline): L1
  between its early feature maps of ``G(x, a)`` and ``x``, and one minus the cosine between its
  descriptors of ``x`` and of ``G(x, a)`` and ``G(x, t)``;
- discriminator: hinge loss, real ``(x, a)`` against edited ``(G(x, t), t)``.

An exponential moving average of the editor's weights is what is evaluated and exported. Every random
draw comes from the seed; a checkpoint (``checkpoint.pt``, written atomically every few minutes and at the
end) holds the weights, optimisers, step and random states, so an interrupted run resumes where it was.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..attributes.labels import split_by_group
from ..datasets import load_dataset
from ..errors import InputError
from ..evaluation.groups import read_group_list
from ..util.devices import resolve_device
from ..util.outputs import atomic_path, write_json
from ..util.progress import progress_bar
from . import AGE_CLASSES, EDIT_SIZE
from .data import ChipSet, chip_set
from .export import export_editor
from .losses import AgeJudge, FaceLoss, to_tensor
from .network import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

log = logging.getLogger("kface")

#: Checks of the held-back groups use this many of their chips (fixed, the first ones).
VAL_CHIPS = 128


@dataclass(frozen=True)
class EditorTrainConfig:
    """Everything that decides a training run (saved with the checkpoint and in ``config.json``)."""

    out: str
    size: int = EDIT_SIZE
    width: int = 16
    batch_size: int = 16
    steps: int = 2400
    lr: float = 2e-4
    seed: int = 0
    val_share: float = 0.1
    reconstruction_weight: float = 10.0
    cycle_weight: float = 10.0
    age_weight: float = 1.0
    adversarial_weight: float = 1.0
    perceptual_weight: float = 1.0
    identity_weight: float = 1.0
    judge_weight: float = 1.0
    judge_chips: int = 1600
    #: The judge's loss is off for this many steps, then ramps up linearly over as many again: from the
    #: first step it slowed the reconstruction by half and blotched the colours (measured at step 100).
    judge_warmup: int = 150
    ema_decay: float = 0.995
    checkpoint_minutes: float = 5.0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.size % 8 or self.size < 32:
            raise InputError(f"--size must be a multiple of 8 and at least 32, got {self.size}")
        for name in ("steps", "batch_size", "width"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.val_share < 1:
            raise InputError(f"--val-share must be between 0 and 1, got {self.val_share}")

    def to_dict(self) -> dict:
        return asdict(self)

    def layout(self) -> dict:
        """The settings a checkpoint must share with the run resuming it."""
        return {key: value for key, value in self.to_dict().items()
                if key not in ("out", "steps", "checkpoint_minutes", "device")}


def _sample_weights(ages: np.ndarray) -> np.ndarray:
    counts = np.bincount(ages, minlength=len(AGE_CLASSES)).astype(np.float64)
    weights = 1.0 / np.sqrt(np.maximum(counts[ages], 1))
    return weights / weights.sum()


def _random_targets(rng: np.random.Generator, ages: np.ndarray) -> np.ndarray:
    """A class other than each one's own, uniformly."""
    shift = rng.integers(1, len(AGE_CLASSES), size=len(ages))
    return (ages + shift) % len(AGE_CLASSES)


class EditorTraining:
    """One training run: the networks, optimisers and data, and the loop that advances them."""

    def __init__(self, chips: ChipSet, config: EditorTrainConfig):
        import torch

        from .network import AgeEditor, EditorShape, PatchDiscriminator

        if chips.chips.shape[1] != config.size:
            raise InputError(f"chips are {chips.chips.shape[1]} px, the run trains at {config.size} px")
        self.config = config
        self.out = Path(config.out)
        self.device = torch.device(resolve_device(config.device))
        split = split_by_group(chips.groups, (1 - config.val_share, config.val_share), config.seed)
        self.train = chips.subset(np.flatnonzero(split == 0))
        self.val = chips.subset(np.flatnonzero(split == 1))
        if len(self.train) < config.batch_size or len(self.val) == 0:
            raise InputError(f"{len(chips)} chips are too few to train on (train {len(self.train)}, "
                             f"val {len(self.val)}, batch {config.batch_size})")
        torch.manual_seed(config.seed)
        self.shape = EditorShape(size=config.size, width=config.width)
        self.editor = AgeEditor(self.shape).to(self.device)
        self.ema = copy.deepcopy(self.editor).eval()
        self.discriminator = PatchDiscriminator(self.shape).to(self.device)
        betas = (0.5, 0.999)
        self.editor_optimizer = torch.optim.Adam(self.editor.parameters(), lr=config.lr, betas=betas)
        self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=betas)
        self.face_loss = FaceLoss(self.device)
        self.judge = AgeJudge(self.face_loss)
        self.rng = np.random.default_rng(config.seed)
        self.weights = _sample_weights(self.train.ages)
        self.step = 0
        self.seconds = 0.0
        self.judge_fit: dict = {}  # training time over all sessions of this run

    # -- one step ------------------------------------------------------------------------------------
    def _batch(self):
        import torch

        rows = self.rng.choice(len(self.train), size=self.config.batch_size, p=self.weights)
        chips = self.train.chips[rows]
        flip = self.rng.random(len(rows)) < 0.5
        chips = np.where(flip[:, None, None, None], chips[:, :, ::-1], chips)
        ages = self.train.ages[rows]
        targets = _random_targets(self.rng, ages)
        def as_long(values: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(values.astype(np.int64)).to(self.device)

        return to_tensor(chips, self.device), as_long(ages), as_long(targets)

    def _frozen_age_logits(self, x):
        """The editor's age logits of ``x`` with its weights held fixed (gradients reach ``x`` only)."""
        from torch.func import functional_call

        frozen = {name: value.detach() for name, value in self.editor.named_parameters()}
        frozen.update(dict(self.editor.named_buffers()))
        features = functional_call(self.editor.encoder, {k[len("encoder."):]: v for k, v in frozen.items()
                                                         if k.startswith("encoder.")}, (x,))
        age_part, _ = functional_call(self.editor.decomposition,
                                      {k[len("decomposition."):]: v for k, v in frozen.items()
                                       if k.startswith("decomposition.")}, (features,))
        return functional_call(self.editor.classifier, {k[len("classifier."):]: v for k, v in frozen.items()
                                                        if k.startswith("classifier.")}, (age_part,))

    def train_step(self) -> dict:
        import torch
        from torch.nn import functional as F

        c = self.config
        x, ages, targets = self._batch()
        self.editor.train()
        rest, logits = self.editor.encode(x)
        reconstruction = self.editor.decode(rest, ages)
        edited = self.editor.decode(rest, targets)
        cycle = self.editor(edited, ages)
        with torch.no_grad():
            real_maps, real_identity = self.face_loss.features(x)
        maps, identities = self.face_loss.features(torch.cat([reconstruction, edited]))
        n = len(x)
        perceptual = sum(F.l1_loss(m[:n], r) for m, r in zip(maps, real_maps))
        identity = (1 - F.cosine_similarity(identities, real_identity.repeat(2, 1))).mean()
        judged = self.judge.head(identities[n:])
        # Re-encoding toggles batch-norm statistics; the frozen pass reads the running ones.
        self.editor.encoder.eval()
        edit_logits = self._frozen_age_logits(edited)
        self.editor.encoder.train()
        losses = {
            "reconstruction": F.l1_loss(reconstruction, x) / 2,  # on the [0, 1] pixel scale
            "cycle": F.l1_loss(cycle, x) / 2,
            "age_real": F.cross_entropy(logits, ages),
            "age_edit": F.cross_entropy(edit_logits, targets),
            "adversarial": -self.discriminator(edited, targets).mean(),
            "perceptual": perceptual,
            "identity": identity,
            "judge": F.cross_entropy(judged, targets),
        }
        total = (c.reconstruction_weight * losses["reconstruction"] + c.cycle_weight * losses["cycle"]
                 + c.age_weight * (losses["age_real"] + losses["age_edit"])
                 + c.adversarial_weight * losses["adversarial"] + c.perceptual_weight * perceptual
                 + c.identity_weight * identity + self._judge_weight() * losses["judge"])
        self.editor_optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.editor_optimizer.step()

        real = self.discriminator(x, ages)
        fake = self.discriminator(edited.detach(), targets)
        discriminator_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        discriminator_loss.backward()
        self.discriminator_optimizer.step()
        self._update_ema()
        self.step += 1
        out = {name: float(value.detach()) for name, value in losses.items()}
        out["discriminator"] = float(discriminator_loss.detach())
        return out

    def _judge_weight(self) -> float:
        warmup = self.config.judge_warmup
        ramp = 1.0 if warmup == 0 else min(max((self.step - warmup) / warmup, 0.0), 1.0)
        return self.config.judge_weight * ramp

    def _update_ema(self) -> None:
        import torch

        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for averaged, current in zip(self.ema.parameters(), self.editor.parameters()):
                averaged.lerp_(current, 1 - decay)
            for averaged, current in zip(self.ema.buffers(), self.editor.buffers()):
                averaged.copy_(current)

    # -- checks ----------------------------------------------------------------------------------------
    def validate(self) -> dict:
        """The averaged editor on the held-back groups' first chips: reconstruction and cycle L1 (0..1
        pixels), its classifier's accuracy on the real chips and on edits to random other classes."""
        import torch

        chips = self.val.chips[:VAL_CHIPS]
        ages = self.val.ages[:VAL_CHIPS]
        targets = _random_targets(np.random.default_rng(self.config.seed + 1), ages)
        x = to_tensor(chips, self.device)
        a = torch.from_numpy(ages).to(self.device)
        t = torch.from_numpy(targets).to(self.device)
        with torch.no_grad():
            rest, logits = self.ema.encode(x)
            reconstruction = self.ema.decode(rest, a)
            edited = self.ema.decode(rest, t)
            cycle = self.ema(edited, a)
            edit_logits = self.ema.encode(edited)[1]
            judged = self.judge.head(self.face_loss.features(edited)[1])
        return {"reconstruction_l1": float((reconstruction - x).abs().mean() / 2),
                "cycle_l1": float((cycle - x).abs().mean() / 2),
                "age_accuracy": float((logits.argmax(1) == a).float().mean()),
                "edit_age_accuracy": float((edit_logits.argmax(1) == t).float().mean()),
                "edit_judge_accuracy": float((judged.argmax(1) == t).float().mean())}

    def fit_judge(self) -> dict:
        """Fit the age judge on up to ``judge_chips`` training chips (drawn as the batches are); its accuracy on
        the held-back chips."""
        count = min(self.config.judge_chips, len(self.train))
        rows = self.rng.choice(len(self.train), size=count, replace=False, p=self.weights)
        self.judge.fit(self.train.chips[rows], self.train.ages[rows], self.config.seed)
        checked = slice(0, 2 * VAL_CHIPS)
        return {"chips": int(count), "val": self.judge.accuracy(self.val.chips[checked], self.val.ages[checked])}

    def sample_sheet(self, path: Path, faces: int = 8) -> None:
        """A PNG of the first val faces (rows): the input, then the averaged editor's edit to each class."""
        import torch
        from PIL import Image

        picks = np.linspace(0, len(self.val) - 1, faces).astype(int)
        x = to_tensor(self.val.chips[picks], self.device)
        columns = [x]
        with torch.no_grad():
            rest, _ = self.ema.encode(x)
            for target in range(len(AGE_CLASSES)):
                columns.append(self.ema.decode(rest, torch.full((len(x),), target, device=self.device)))
        rows = [(torch.cat([column[i] for column in columns], dim=2) + 1) * 127.5 for i in range(len(x))]
        image = torch.cat(rows, dim=1).clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
        with atomic_path(path) as temp:
            Image.fromarray(image).save(temp, format="PNG")

    # -- checkpoints -----------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save(self) -> None:
        import torch

        state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "layout": self.config.layout(),
                 "shape": self.shape.to_dict(), "step": self.step, "seconds": self.seconds,
                 "editor": self.editor.state_dict(), "ema": self.ema.state_dict(),
                 "discriminator": self.discriminator.state_dict(), "judge": self.judge.head.state_dict(),
                 "judge_fit": self.judge_fit,
                 "editor_optimizer": self.editor_optimizer.state_dict(),
                 "discriminator_optimizer": self.discriminator_optimizer.state_dict(),
                 "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
        with atomic_path(self.checkpoint_path, durable=True) as temp:
            torch.save(state, temp)

    def resume(self) -> bool:
        """Load the run's checkpoint, if there is one; an incompatible one is an :class:`InputError`."""
        import torch

        if not self.checkpoint_path.is_file():
            return False
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        except Exception as exc:  # noqa: BLE001  (torch raises many kinds on a damaged file)
            raise InputError(f"{self.checkpoint_path}: unreadable checkpoint ({exc}); "
                             f"delete it to start over") from None
        if state.get("format") != CHECKPOINT_FORMAT or state.get("layout") != self.config.layout():
            raise InputError(f"{self.checkpoint_path}: a checkpoint of other settings; use another --out")
        self.editor.load_state_dict(state["editor"])
        self.ema.load_state_dict(state["ema"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.judge.head.load_state_dict(state["judge"])
        self.judge_fit = state["judge_fit"]
        self.editor_optimizer.load_state_dict(state["editor_optimizer"])
        self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.step, self.seconds = state["step"], state["seconds"]
        return True

    # -- the loop --------------------------------------------------------------------------------------
    def run(self, progress: bool = False) -> dict:
        """Train to ``config.steps`` (from the checkpoint where one exists); returns the summary written to
        ``summary.json``."""
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "config.json", self.config.to_dict())
        if self.resume():
            log.info("resumed %s at step %d", self.checkpoint_path, self.step)
        else:
            self.judge_fit = self.fit_judge()
            log.info("age judge on the face network's descriptor: %s", self.judge_fit)
        log_path = self.out / "log.jsonl"
        bar = progress_bar(self.config.steps, "training the age editor", enabled=progress)
        bar.update(self.step)
        last_save = time.monotonic()
        window: list[dict] = []
        try:
            while self.step < self.config.steps:
                started = time.monotonic()
                window.append(self.train_step())
                self.seconds += time.monotonic() - started
                bar.update(1)
                due = time.monotonic() - last_save >= 60 * self.config.checkpoint_minutes
                if due or self.step == self.config.steps:
                    self._record(log_path, window)
                    window = []
                    last_save = time.monotonic()
        finally:
            bar.close()
        summary = {"steps": self.step, "seconds": round(self.seconds, 1),
                   "seconds_per_step": round(self.seconds / max(self.step, 1), 3),
                   "train_chips": len(self.train), "val_chips": len(self.val),
                   "train_groups": len(set(self.train.groups)), "val_groups": len(set(self.val.groups)),
                   "device": str(self.device), "val": self.validate(), "judge": self.judge_fit,
                   "config": self.config.to_dict()}
        write_json(self.out / "summary.json", summary)
        return summary

    def _record(self, log_path: Path, window: list[dict]) -> None:
        means = {name: round(float(np.mean([w[name] for w in window])), 4) for name in window[0]} if window else {}
        entry = {"step": self.step, "seconds": round(self.seconds, 1), "train": means, "val": self.validate()}
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
        self.save()
        self.sample_sheet(self.out / "samples.png")
        log.info("step %d: %s", self.step, entry["val"])


def train_age_editor(chips: ChipSet, config: EditorTrainConfig, progress: bool = False,
                     threads: int | None = None) -> dict:
    """Train (or resume) an age editor on ``chips`` (already at ``config.size`` px) into ``config.out``."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return EditorTraining(chips, config).run(progress)


def dataset_chips(dataset: str, root: str, out: Path, size: int, group_by: str | None = "family",
                  exclude_groups: str | None = None, dataset_options: dict | None = None,
                  progress: bool = False, device: str = "auto") -> ChipSet:
    """The chips of a dataset's faces, made once and kept as ``OUT/chips.npz`` (a resumed run reads them
    back); the groups listed in ``exclude_groups`` (one per line, e.g. kface's held-out families) left out."""
    cached = out / "chips.npz"
    if cached.is_file():
        return ChipSet.load(cached)
    index = load_dataset(dataset, root, progress=progress, **(dataset_options or {}))
    chips = chip_set(index, size, group_by, progress, device)
    if exclude_groups is not None:
        excluded = read_group_list(exclude_groups)
        chips = chips.subset(np.flatnonzero([not set(g.split("+")) & excluded for g in chips.groups]))
    chips.save(cached)
    return chips


def train_and_export(chips: ChipSet, config: EditorTrainConfig, progress: bool = False) -> dict:
    """Train (or resume) into ``config.out``, then export the averaged editor to ``OUT/editor.onnx``."""
    summary = train_age_editor(chips, config, progress)
    summary["onnx"] = export_editor(Path(config.out) / "checkpoint.pt", Path(config.out) / "editor.onnx")
    write_json(Path(config.out) / "summary.json", summary)
    return summary
