"""Accuracy, per-class accuracy and the confusion matrix of a model on a dataset."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from promptcam.models.promptcam import PromptCAM


@dataclass
class EvalResult:
    accuracy: float
    per_class_accuracy: list[float]
    confusion: np.ndarray  # [true, predicted]
    loss: float

    def write_confusion(self, path: Path, class_names: list[str]) -> Path:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["true \\ predicted", *class_names])
            for name, row in zip(class_names, self.confusion, strict=True):
                writer.writerow([name, *row.tolist()])
        return path


@torch.no_grad()
def evaluate(model: PromptCAM, loader: DataLoader, device: torch.device) -> EvalResult:
    model.eval()
    c = model.num_classes
    confusion = np.zeros((c, c), dtype=np.int64)
    total_loss, count = 0.0, 0
    for images, labels in loader:
        logits, _ = model(images.to(device))
        labels = labels.to(device)
        total_loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        count += len(labels)
        np.add.at(confusion, (labels.cpu().numpy(), logits.argmax(-1).cpu().numpy()), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    accuracy = float(confusion.diagonal().sum() / max(1, confusion.sum()))
    return EvalResult(accuracy, per_class.tolist(), confusion, total_loss / max(1, count))
