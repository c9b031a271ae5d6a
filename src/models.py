"""The models a run can train: the seed's SimpleNet, an MLP and a small CNN.

Every model takes a batch of images shaped (N, 1, 28, 28) or (N, 28, 28) with values in [0, 1]
and returns class logits (N, 10).
"""

from collections.abc import Sequence

import torch
from torch import nn

IMAGE_PIXELS = 28 * 28
N_CLASSES = 10


class SimpleNet(nn.Module):
    """The seed document's model: a single Linear layer on the flattened image."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(IMAGE_PIXELS, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(-1, IMAGE_PIXELS))


class MLP(nn.Module):
    """Fully connected layers with ReLU and dropout between them."""

    def __init__(self, hidden_sizes: Sequence[int] = (256, 128), dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = IMAGE_PIXELS
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, int(hidden)), nn.ReLU(), nn.Dropout(dropout)]
            width = int(hidden)
        layers.append(nn.Linear(width, N_CLASSES))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.reshape(-1, IMAGE_PIXELS))


class CNN(nn.Module):
    """Two 3x3 conv blocks (conv, ReLU, 2x2 max-pool), then one hidden Linear layer."""

    def __init__(
        self, channels: Sequence[int] = (16, 32), hidden_size: int = 128, dropout: float = 0.1
    ) -> None:
        super().__init__()
        first, second = (int(c) for c in channels)
        self.features = nn.Sequential(
            nn.Conv2d(1, first, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(first, second, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(second * 7 * 7, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, N_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.reshape(-1, 1, 28, 28)))
