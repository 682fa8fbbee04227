"""The training loop's parts: one optimiser step, one pass over pair batches, the val measurements,
the best-epoch comparison and the CPU thread guard (used by pair, identity and attribute training)."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from ..metrics import accuracy_at, bce_loss, choose_threshold, overlap_area

#: Pairs per forward pass when measuring val (no gradients, so larger than a training batch).
EVAL_BATCH = 4096
#: KDE grid of the per-epoch val overlap and threshold (refined where a density is narrow, see
#: kface.metrics.kde_densities): a quarter of the report's default, 4x cheaper, equal to ~1e-6 here.
VAL_GRID = 512
#: Images per forward pass when measuring through trainable backbone layers.
EMBED_BATCH = 256
#: Gather an epoch's features up front (then batches are views) while that takes at most this much memory.
PREGATHER_BYTES = 1 << 30


def optimiser_step(loss: torch.Tensor, optimizer, parameters: list, scaler=None,
                   weights: Optional[torch.Tensor] = None) -> None:
    """Clear the gradients, backpropagate ``loss`` (``weights``: d(objective)/d(loss) per element, for a
    loss that is not a scalar) and step, through the AMP ``scaler`` when it is enabled."""
    # Setting .grad to None directly skips the optimiser's zero_grad bookkeeping (small steps are bound
    # by per-call overhead).
    for parameter in parameters:
        parameter.grad = None
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward(weights)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward(weights)
        optimizer.step()


@dataclass
class PairTensors:
    """One split's pairs as tensors on the training device."""

    a: torch.Tensor
    b: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, split, device: torch.device) -> "PairTensors":
        """The pairs of ``split`` (a :class:`~kface.training.data.SplitPairs`) on ``device``."""
        return cls(torch.from_numpy(split.a).to(device), torch.from_numpy(split.b).to(device),
                   torch.from_numpy(split.labels.astype(np.float32)).to(device))


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: depends on (seed, epoch) only, so a resumed run draws the same."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(count, generator=generator)


def batches(features: torch.Tensor, pairs: PairTensors, order: torch.Tensor, batch_size: int, rank: int = 0,
            world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    """(features a, features b, labels, global batch size) of this process's share of each batch.

    Batches follow ``order``; each process takes every ``world_size``-th pair of each batch, from its
    ``rank``-th on.
    """
    order = order.to(pairs.a.device)
    a, b, labels = pairs.a[order], pairs.b[order], pairs.labels[order]
    row_bytes = features[:1].numel() * features.element_size()
    if 2 * len(order) * row_bytes <= PREGATHER_BYTES:
        # One gather per epoch instead of two per batch: batches become views.
        a, b = features.index_select(0, a), features.index_select(0, b)
        take = lambda rows: rows  # noqa: E731
    else:
        take = lambda rows: features.index_select(0, rows)  # noqa: E731
    for start in range(0, len(order), batch_size):
        stop = min(start + batch_size, len(order))
        mine = slice(start + rank, stop, world_size)
        yield take(a[mine]), take(b[mine]), labels[mine], stop - start


@dataclass
class EpochOutput:
    """What one pass over pairs gives: the mean loss and accuracy (P(same) >= 0.5), and in eval mode
    each pair's distance and P(same)."""

    loss: float
    accuracy: float
    count: int
    distances: Optional[np.ndarray] = None
    probabilities: Optional[np.ndarray] = None


def run_epoch(model: torch.nn.Module, batch_iter, criterion, *, optimizer=None, scaler=None, amp: bool = False,
              world_size: int = 1, reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> EpochOutput:
    """One pass over ``batch_iter`` (see :func:`batches`): trains when given an ``optimizer``, else measures.

    The training loss of a batch is the sum of its per-pair losses times ``world_size`` over the global
    batch size, so DDP's gradient average equals the one-process mean. ``reduce`` sums the loss and
    accuracy totals over processes.
    """
    training = optimizer is not None
    model.train(training)
    losses, logits_all, labels_all, distances_all = [], [], [], []
    device_type = next(model.parameters()).device.type
    parameters = [p for group in optimizer.param_groups for p in group["params"]] if training else []
    with torch.set_grad_enabled(training):
        for features_a, features_b, labels, global_size in batch_iter:
            with torch.autocast(device_type, dtype=torch.float16) if amp else contextlib.nullcontext():
                distances, logits = model(features_a, features_b)
            pair_losses = criterion(distances.float(), logits.float(), labels)
            if training:
                # d(batch loss)/d(pair loss): backward from the pair losses directly spares two graph nodes.
                optimiser_step(pair_losses, optimizer, parameters, scaler,
                               torch.full_like(pair_losses, world_size / global_size))
            else:
                distances_all.append(distances.detach().float())
            losses.append(pair_losses.detach())
            logits_all.append(logits.detach().float())
            labels_all.append(labels)
    if not losses:
        return EpochOutput(math.nan, math.nan, 0)
    logits, labels = torch.cat(logits_all), torch.cat(labels_all)
    totals = reduce(torch.stack([torch.cat(losses).sum(), ((logits >= 0).float() == labels).float().sum(),
                                 torch.tensor(float(len(labels)), device=labels.device)]).double())
    count = int(totals[2].item())
    output = EpochOutput(float(totals[0] / count), float(totals[1] / count), count)
    if not training:
        output.distances = torch.cat(distances_all).cpu().numpy().astype(np.float64)
        output.probabilities = torch.sigmoid(logits).cpu().numpy().astype(np.float64)
    return output


@dataclass
class ValPass:
    """One pass over the val pairs, and ``sample``: the pairs (at most ``DEFAULT_SAMPLES`` of each class,
    drawn once with the seed, as the study did) on which the threshold is chosen and the overlap measured,
    which bounds the cost of their density estimates on large val splits."""

    distances: np.ndarray
    probabilities: np.ndarray
    loss: float
    labels: np.ndarray
    sample: np.ndarray

    def sampled(self) -> tuple[np.ndarray, np.ndarray]:
        return self.distances[self.sample], self.labels[self.sample]


def _sampled_overlap(val: ValPass) -> float:
    distances, labels = val.sampled()
    return overlap_area(distances[labels == 1], distances[labels == 0], grid=VAL_GRID)


#: Val measurements by name: each takes the pass and the threshold chosen on the val sample.
VAL_METRICS: dict[str, Callable] = {
    "loss": lambda val, threshold: val.loss,
    "bce": lambda val, threshold: bce_loss(val.probabilities, val.labels),
    "accuracy": lambda val, threshold: accuracy_at(val.distances, val.labels, threshold.value),
    "overlap": lambda val, threshold: _sampled_overlap(val),
}


def embed_rows(model: torch.nn.Module, features: torch.Tensor, rows: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """The float32 embeddings of images ``rows`` of ``features``, in eval mode (the model's mode is put back
    after), ``EMBED_BATCH`` images at a time."""
    was_training = model.training
    model.train(False)
    with torch.inference_mode():
        with torch.autocast(features.device.type, dtype=torch.float16) if amp else contextlib.nullcontext():
            embeddings = torch.cat([model.embed(features.index_select(0, rows[start:start + EMBED_BATCH])).float()
                                    for start in range(0, len(rows), EMBED_BATCH)])
    model.train(was_training)
    return embeddings


def evaluate_pairs(model: torch.nn.Module, features: torch.Tensor, pairs: PairTensors, criterion,
                   amp: bool = False) -> EpochOutput:
    """Every pair's distance, P(same) and loss, without training (as :func:`run_epoch` measures them).

    With trainable backbone layers in the model each image is embedded once, not once per pair: those
    layers cost far more than a distance (val pairs share their images about three times over).
    """
    if model.suffix is None:
        return run_epoch(model, batches(features, pairs, torch.arange(len(pairs.labels)), EVAL_BATCH), criterion,
                         amp=amp)
    count = len(pairs.labels)
    if count == 0:
        return EpochOutput(math.nan, math.nan, 0)
    rows, where = torch.unique(torch.cat([pairs.a, pairs.b]), return_inverse=True)
    embeddings = embed_rows(model, features, rows, amp)
    with torch.inference_mode():
        distances = model.distance.pairwise(embeddings[where[:count]], embeddings[where[count:]])
        logits = model.probability.logits(distances)
        losses = criterion(distances, logits, pairs.labels)
        correct = ((logits >= 0).float() == pairs.labels).float()
    return EpochOutput(float(losses.mean()), float(correct.mean()), count, distances.double().cpu().numpy(),
                       torch.sigmoid(logits).double().cpu().numpy())


def measure(model: torch.nn.Module, features: torch.Tensor, pairs: PairTensors, criterion, rule: str,
            sample: np.ndarray,
            amp: bool = False) -> tuple[dict, object, ValPass]:
    """Val metrics of ``model`` (see :data:`VAL_METRICS`), the threshold chosen by ``rule`` on the
    ``sample`` of val pairs (indices), and the pass itself (every val pair's distance and label)."""
    output = evaluate_pairs(model, features, pairs, criterion, amp)
    val = ValPass(output.distances, output.probabilities, output.loss, pairs.labels.cpu().numpy().astype(np.int8),
                  sample)
    threshold = choose_threshold(*val.sampled(), rule, split="val", grid=VAL_GRID)
    return {name: float(metric(val, threshold)) for name, metric in VAL_METRICS.items()}, threshold, val



def better(value: Optional[float], best: Optional[float], direction: str) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value < best if direction == "lower" else value > best


@dataclass
class BestEpoch:
    """The best epoch so far: the first one offered, then each whose value ``improves(value, best)``."""

    improves: Callable[[Any, Any], bool]
    epoch: Optional[int] = None
    value: Any = None

    def offer(self, epoch: int, value: Any) -> bool:
        """Keep ``epoch`` when it is the best so far; say whether it was."""
        if self.epoch is not None and not self.improves(value, self.value):
            return False
        self.epoch, self.value = epoch, value
        return True


@contextlib.contextmanager
def one_thread(enabled: bool = True):
    """One torch CPU thread (``enabled``), the caller's setting restored after: small heads gain nothing
    from more, and on a busy machine threads waiting for each other cost several times the work (3-5x
    measured on pair heads, 30x on the attribute heads on a busy 2-core machine)."""
    if not enabled:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def threads_for(features: np.ndarray):
    """:func:`one_thread` while the features are vectors (backbone layers on maps do gain from threads)."""
    return one_thread(features.ndim <= 2)


def single_threaded_blas():
    """NumPy's and SciPy's BLAS on one thread for the small val KDEs (an idle BLAS thread spins, taking
    a third of a core here). SciPy is loaded first, since the limit only reaches libraries loaded by then."""
    import scipy.stats  # noqa: F401
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    return threadpool_limits(limits=1, user_api="blas")
