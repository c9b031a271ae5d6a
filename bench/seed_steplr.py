"""The seed document's StepLR MNIST script, kept faithful to it as the benchmark's baseline.

Differences from the document, all needed to measure it side by side with the project:
- the data root, the epoch count and the seed come from the command line (download stays off:
  there is no network here);
- the per-epoch training time and the peak RSS are printed as one JSON line at the end.
"""

import argparse
import json
import resource
import time

import torch
import torch.nn as nn
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


class SimpleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        x = x.view(-1, 28 * 28)
        x = self.fc(x)
        return x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="./data")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(args.seed)

    transform = transforms.ToTensor()
    train_dataset = datasets.MNIST(root=args.root, train=True, download=False, transform=transform)
    test_dataset = datasets.MNIST(root=args.root, train=False, transform=transform)
    train_loader = DataLoader(train_dataset, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_dataset, batch_size=64)

    model = SimpleNet()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=0.001)
    scheduler = StepLR(optimizer, step_size=2, gamma=0.1)

    def train(epoch):
        model.train()
        total_loss = 0
        for data, target in train_loader:
            optimizer.zero_grad()
            output = model(data)
            loss = criterion(output, target)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
        print(
            f"Epoch {epoch}, Loss: {total_loss / len(train_loader):.4f}, "
            f"LR: {optimizer.param_groups[0]['lr']:.6f}"
        )

    def test():
        model.eval()
        correct = 0
        total = 0
        with torch.no_grad():
            for data, target in test_loader:
                output = model(data)
                _, predicted = torch.max(output.data, 1)
                total += target.size(0)
                correct += (predicted == target).sum().item()
        accuracy = 100.0 * correct / total
        print(f"Test Accuracy: {accuracy:.2f}%")
        return accuracy

    train_times = []
    accuracy = 0.0
    for epoch in range(1, args.epochs + 1):
        epoch_started = time.perf_counter()
        train(epoch)
        train_times.append(time.perf_counter() - epoch_started)
        accuracy = test()
        scheduler.step()

    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "train_s_per_epoch": sum(train_times) / len(train_times),
        "test_acc": accuracy,
        "in_process_s": time.perf_counter() - started,
        "peak_rss_mib": peak_rss_mib,
    }
    print("BENCH " + json.dumps(result))


if __name__ == "__main__":
    main()
