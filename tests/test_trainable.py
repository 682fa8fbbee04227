"""Cut points of the trainable backbones: the frozen prefix then the tuned suffix is the whole network."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kface.backbones.trainable import CACHED_CUTS, build_suffix, check_cut, check_cut_device, empty_network
from kface.errors import InputError

CUTS = (*CACHED_CUTS, "all")


@pytest.fixture(scope="module")
def networks():
    # Seeded untrained weights: the split is what is tested (facenet's weights download at run time).
    torch.manual_seed(0)
    return {"dlib-torch": empty_network("dlib-torch"), "facenet-vggface2": empty_network("facenet-vggface2")}


def chips(size: int, count: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8))


# facenet at 80 px (its pooling adapts to any size from about 80 px up) keeps the test quick.
@pytest.mark.parametrize("backbone, size", [("dlib-torch", 150), ("facenet-vggface2", 80)])
def test_prefix_then_suffix_is_the_whole_network_in_train_mode_too(networks, backbone, size):
    network = networks[backbone]
    x = chips(size)
    with torch.no_grad():
        whole = network(network.prepare_chips(x))
        sizes = []
        for cut in CUTS:
            suffix = build_suffix(network, cut).train()  # batch norm keeps its pretrained statistics
            prefix = x if cut == "all" else network.forward_prefix(network.prepare_chips(x), cut)
            torch.testing.assert_close(suffix(prefix), whole, rtol=1e-4, atol=1e-5)
            sizes.append(sum(p.numel() for p in suffix.parameters()))
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)  # each cut trains more than the one before
    assert all(p.requires_grad for p in build_suffix(network, "fc").parameters())


def test_facenet_embeddings_stay_unit_length_after_the_cut(networks):
    network = networks["facenet-vggface2"]
    with torch.no_grad():
        prefix = network.forward_prefix(network.prepare_chips(chips(80)), "last-block")
        out = build_suffix(network, "last-block")(prefix)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(1))


def test_the_prefix_store_holds_the_chip_and_its_mirror_image():
    from kface.embeddings.prefix import PrefixNetwork
    from kface.faces.detect import mirror

    x = chips(150, 2).numpy()
    prefix = PrefixNetwork("dlib-torch", "last-block", "cpu")
    both = prefix(x)
    assert both.shape == (2, 2, 256, 4, 4) and both.dtype == np.float16
    np.testing.assert_array_equal(both[:, 1], prefix(mirror(x))[:, 0])


def test_cut_errors_name_the_choices():
    with pytest.raises(InputError, match="choose one of: none, fc, last-block, last-stage, all"):
        check_cut("dlib-torch", "everything")
    with pytest.raises(InputError, match="needs --backbone dlib-torch"):
        check_cut("dlib-resnet", "last-block")
    with pytest.raises(InputError, match="--unfreeze all .* needs a CUDA GPU"):
        check_cut_device("all", "cpu")
    check_cut_device("all", "cuda")
    check_cut_device("last-stage", "cpu")
