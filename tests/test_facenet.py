"""facenet backbones: --weights FILE, facenet-pytorch's downloaded file found without network, downloads
only when asked, and an immediate clear error when the weights cannot be had."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from facenet_pytorch import InceptionResnetV1

from kface.backbones import load_backbone
from kface.backbones.facenet import DOWNLOAD_VARIABLE, load_inception_resnet, weights_folder
from kface.cli import cli
from kface.embeddings.embedder import Embedder
from kface.errors import InputError, KfaceError
from kface.util.cache import CacheSetting


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A real InceptionResnetV1 state dict (seeded random weights: the real ones download at run time)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "facenet.pt"
    torch.save(InceptionResnetV1(classify=False).state_dict(), path)
    return path


def test_weights_file_embeds_512d(samples_dir, weights_file, tmp_path):
    embedder = Embedder("facenet-vggface2", weights=str(weights_file), device="cpu",
                        cache=CacheSetting(folder=tmp_path))
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


@pytest.fixture
def empty_torch_home(monkeypatch, tmp_path):
    """TORCH_HOME in an empty folder, downloads forbidden, and any network use failing the test."""
    import facenet_pytorch.models.inception_resnet_v1 as irv1

    def no_network(url, dst, *args, **kwargs):
        pytest.fail(f"facenet-pytorch tried to download {url}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv(DOWNLOAD_VARIABLE, "0")
    monkeypatch.setattr(irv1, "download_url_to_file", no_network)
    return tmp_path


def pretrained_state(classes: int) -> dict:
    """A state dict laid out like facenet-pytorch's released files (classifier included), seeded."""
    torch.manual_seed(1)
    return InceptionResnetV1(classify=True, num_classes=classes).state_dict()


def test_missing_weights_fail_at_once_naming_file_and_folder(empty_torch_home):
    with pytest.raises(InputError) as caught:  # the fixture fails the test on any download attempt
        load_backbone("facenet-vggface2", "cpu")
    message = str(caught.value)
    assert "20180402-114759-vggface2.pt" in message and str(empty_torch_home / "checkpoints") in message
    assert "--weights FILE" in message and f"{DOWNLOAD_VARIABLE}=0" in message


def test_cli_reports_missing_weights_as_one_input_error_line(empty_torch_home, samples_dir, tmp_path):
    out = tmp_path / "out.npz"
    result = CliRunner().invoke(cli, ["embed", "--backbone", "facenet-casia", "--out", str(out), "--quiet",
                                      str(samples_dir / "obama.jpg")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: facenet-casia: no weights file "
                                                   "20180408-102900-casia-webface.pt")
    assert not out.exists()


def test_weights_folder_follows_facenet_pytorch(monkeypatch, tmp_path):
    from facenet_pytorch.models.inception_resnet_v1 import get_torch_home

    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert weights_folder() == Path(get_torch_home()) / "checkpoints"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_folder() == Path(get_torch_home()) / "checkpoints" == tmp_path / "xdg" / "torch" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert weights_folder() == Path(get_torch_home()) / "checkpoints" == tmp_path / "th" / "checkpoints"


def test_downloaded_weights_load_without_network(empty_torch_home):
    state = pretrained_state(8631)
    folder = empty_torch_home / "checkpoints"
    folder.mkdir()
    torch.save(state, folder / "20180402-114759-vggface2.pt")
    model = load_inception_resnet("facenet-vggface2")
    assert not model.training
    loaded = model.state_dict()
    assert set(loaded) == {key for key in state if not key.startswith("logits.")}
    assert all(torch.equal(loaded[key], state[key]) for key in loaded)


def test_download_by_default_into_the_folder_looked_in(monkeypatch, empty_torch_home):
    import facenet_pytorch.models.inception_resnet_v1 as irv1

    state = pretrained_state(10575)
    destinations = []

    def fake_download(url, dst, *args, **kwargs):
        destinations.append(dst)
        torch.save(state, dst)

    monkeypatch.setattr(irv1, "download_url_to_file", fake_download)
    monkeypatch.delenv(DOWNLOAD_VARIABLE)
    load_inception_resnet("facenet-casia")
    assert destinations == [str(empty_torch_home / "checkpoints" / "20180408-102900-casia-webface.pt")]
    monkeypatch.setenv(DOWNLOAD_VARIABLE, "0")
    load_inception_resnet("facenet-casia")  # the downloaded file is now found, downloads forbidden or not
    assert len(destinations) == 1


def test_failed_download_is_a_clear_error(monkeypatch, empty_torch_home):
    import facenet_pytorch.models.inception_resnet_v1 as irv1

    def unreachable(url, dst, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(irv1, "download_url_to_file", unreachable)
    monkeypatch.delenv(DOWNLOAD_VARIABLE)
    with pytest.raises(KfaceError, match="could not download its vggface2 weights .OSError.; offline, put "
                                         "20180402-114759-vggface2.pt in .* or pass --weights FILE"):
        load_backbone("facenet-vggface2", "cpu")
