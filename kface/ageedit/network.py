"""The age editor's PyTorch networks: encoder, feature decomposition, age classifier, age-conditioned decoder,
and the patch discriminator used in training.

Chips are (N, 3, S, S) floats in [-1, 1]. The encoder maps a chip to an (N, C, S/8, S/8) feature map; the
decomposition module attends over its positions (self-attention) and gates each feature into an age-related
part ``g * f`` and an age-unrelated part ``(1 - g) * f``. The age classifier reads the age-related part. The
decoder starts from the age-unrelated part; the "age feature CNN" reads that part joined with the target age
class (one-hot planes) and gives every decoder layer the scale and shift of its conditional batch norm.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from . import AGE_CLASSES, EDIT_SIZE

#: What a training checkpoint (``kface train-age-editor``'s ``checkpoint.pt``) says it is.
CHECKPOINT_FORMAT = "kface-age-editor"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class EditorShape:
    """The sizes that decide an editor's layout (saved in checkpoints and the card)."""

    size: int = EDIT_SIZE
    width: int = 16  # channels after the first convolution; doubled at each of the three downsamplings
    classes: int = len(AGE_CLASSES)
    attention: int = 32  # query/key channels of the decomposition's self-attention
    style: int = 64  # length of the age feature CNN's vector

    @property
    def channels(self) -> int:
        return self.width * 8

    def to_dict(self) -> dict:
        return asdict(self)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.2))


class Encoder(nn.Module):
    """Chip -> feature map at 1/8 of its side."""

    def __init__(self, shape: EditorShape):
        super().__init__()
        w = shape.width
        self.layers = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2),
            _down(w, 2 * w), _down(2 * w, 4 * w), _down(4 * w, 8 * w),
            nn.Conv2d(8 * w, 8 * w, 3, padding=1, bias=False), nn.BatchNorm2d(8 * w), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class FeatureDecomposition(nn.Module):
    """Self-attention over the feature map's positions, then a sigmoid gate per feature: the gated share is
    the age-related part, the rest the age-unrelated part (they sum to the input)."""

    def __init__(self, shape: EditorShape):
        super().__init__()
        c = shape.channels
        self.query = nn.Conv2d(c, shape.attention, 1)
        self.key = nn.Conv2d(c, shape.attention, 1)
        self.value = nn.Conv2d(c, c, 1)
        self.gate = nn.Conv2d(2 * c, c, 1)
        self.scale = shape.attention ** -0.5

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = features.shape
        q = self.query(features).flatten(2)  # (N, A, HW)
        k = self.key(features).flatten(2)
        v = self.value(features).flatten(2)  # (N, C, HW)
        attention = torch.softmax(torch.bmm(q.transpose(1, 2), k) * self.scale, dim=-1)  # (N, HW, HW)
        context = torch.bmm(v, attention.transpose(1, 2)).view(n, c, h, w)
        gate = torch.sigmoid(self.gate(torch.cat([features, context], dim=1)))
        return gate * features, (1 - gate) * features


class AgeClassifier(nn.Module):
    """Age-related features -> age class logits."""

    def __init__(self, shape: EditorShape):
        super().__init__()
        self.fc = nn.Linear(shape.channels, shape.classes)

    def forward(self, age_features: torch.Tensor) -> torch.Tensor:
        return self.fc(age_features.mean(dim=(2, 3)))


class AgeFeatureCNN(nn.Module):
    """Age-unrelated features joined with the target age's one-hot planes -> one vector, from which each
    decoder layer's conditional batch norm takes its scale and shift."""

    def __init__(self, shape: EditorShape):
        super().__init__()
        c = shape.channels
        self.classes = shape.classes
        self.layers = nn.Sequential(
            nn.Conv2d(c + shape.classes, shape.style, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(shape.style, shape.style, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.out = nn.Linear(shape.style + shape.classes, shape.style)

    def forward(self, rest: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(target, self.classes).to(rest.dtype)
        planes = onehot[:, :, None, None].expand(-1, -1, rest.shape[2], rest.shape[3])
        pooled = self.layers(torch.cat([rest, planes], dim=1)).mean(dim=(2, 3))
        return F.leaky_relu(self.out(torch.cat([pooled, onehot], dim=1)), 0.2)


class ConditionalBatchNorm(nn.Module):
    """Batch norm without its own affine; scale and shift come from the age vector."""

    def __init__(self, channels: int, style: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.affine = nn.Linear(style, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine(style).chunk(2, dim=1)
        return self.norm(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, style: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = ConditionalBatchNorm(cout, style)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = ConditionalBatchNorm(cout, style)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = F.leaky_relu(self.norm1(self.conv1(x), style), 0.2)
        h = self.norm2(self.conv2(h), style)
        return F.leaky_relu(h + self.skip(x), 0.2)


class Decoder(nn.Module):
    """Age-unrelated features + age vector -> chip."""

    def __init__(self, shape: EditorShape):
        super().__init__()
        w, s = shape.width, shape.style
        self.blocks = nn.ModuleList([DecoderBlock(8 * w, 8 * w, s, False), DecoderBlock(8 * w, 4 * w, s, True),
                                     DecoderBlock(4 * w, 2 * w, s, True), DecoderBlock(2 * w, w, s, True)])
        self.out = nn.Conv2d(w, 3, 3, padding=1)

    def forward(self, rest: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = rest
        for block in self.blocks:
            x = block(x, style)
        return torch.tanh(self.out(x))


class AgeEditor(nn.Module):
    """The whole editor: :meth:`forward` edits chips to target classes; :meth:`encode` gives the two parts and
    the age logits."""

    def __init__(self, shape: EditorShape = EditorShape()):
        super().__init__()
        self.shape = shape
        self.encoder = Encoder(shape)
        self.decomposition = FeatureDecomposition(shape)
        self.classifier = AgeClassifier(shape)
        self.age_cnn = AgeFeatureCNN(shape)
        self.decoder = Decoder(shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(age-unrelated features, age logits)."""
        age_part, rest = self.decomposition(self.encoder(x))
        return rest, self.classifier(age_part)

    def decode(self, rest: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.decoder(rest, self.age_cnn(rest, target))

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0], target)


class PatchDiscriminator(nn.Module):
    """Real or edited, per patch, for a given age class (a projection discriminator: the class embedding's
    dot product with each patch's features is added to that patch's score). Spectral norm keeps it smooth."""

    def __init__(self, shape: EditorShape = EditorShape()):
        super().__init__()
        w = shape.width
        sn = nn.utils.spectral_norm
        self.features = nn.Sequential(
            sn(nn.Conv2d(3, w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2))
        self.score = sn(nn.Conv2d(4 * w, 1, 3, padding=1))
        self.embed = sn(nn.Embedding(shape.classes, 4 * w))

    def forward(self, x: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        projection = (h * self.embed(age)[:, :, None, None]).sum(dim=1, keepdim=True)
        return self.score(h) + projection


class ExportedEditor(nn.Module):
    """The graph that ships: uint8 NHWC chips and target classes in; out, the edits, the reconstructions
    (each chip decoded at the class its own classifier gives it) as float pixels 0..255, and the classifier's
    probabilities. The reconstruction lets an edit be carried onto a larger chip as a difference (see
    :mod:`kface.ageedit.editor`)."""

    def __init__(self, editor: AgeEditor):
        super().__init__()
        self.editor = editor

    def forward(self, chips: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = chips.permute(0, 3, 1, 2).float() / 127.5 - 1
        rest, logits = self.editor.encode(x)
        pixels = [((self.editor.decode(rest, classes) + 1) * 127.5).clamp(0, 255).permute(0, 2, 3, 1)
                  for classes in (target, logits.argmax(dim=1))]
        return pixels[0], pixels[1], torch.softmax(logits, dim=1)
