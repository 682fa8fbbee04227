"""facenet backbones: --weights FILE offline, a clear error when the weights cannot be had."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from facenet_pytorch import InceptionResnetV1

from kface.backbones import load_backbone
from kface.embeddings import Embedder
from kface.errors import InputError, KfaceError


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A real InceptionResnetV1 state dict (seeded random weights: the real ones download at run time)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "facenet.pt"
    torch.save(InceptionResnetV1(classify=False).state_dict(), path)
    return path


def test_weights_file_embeds_512d(samples_dir, weights_file, tmp_path):
    embedder = Embedder("facenet-vggface2", weights=str(weights_file), device="cpu", cache_dir=tmp_path)
    result = embedder.embed([samples_dir / "obama.jpg", samples_dir / "biden.jpg"])
    assert result.embeddings.shape == (2, 512) and np.isfinite(result.embeddings).all()
    # facenet's embeddings are L2-normalised by the model
    assert np.allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-4)


def test_wrong_weights_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(InputError, match="does not match InceptionResnetV1"):
        load_backbone("facenet-casia", "cpu", str(bad))
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a loadable state dict"):
        load_backbone("facenet-casia", "cpu", str(text))


def test_offline_without_weights_is_a_clear_error(monkeypatch, tmp_path):
    import facenet_pytorch.models.inception_resnet_v1 as irv1

    def no_network(url, dst, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached download there
    monkeypatch.setattr(irv1, "download_url_to_file", no_network)
    with pytest.raises(KfaceError, match="offline, pass --weights FILE"):
        load_backbone("facenet-vggface2", "cpu")
