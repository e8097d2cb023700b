"""The trained built-in digits classifier: accuracy, and invariance to how a digit is drawn."""

from __future__ import annotations

import pytest
import torch

from marcelle_torch.models import decode_instances, load_model, postprocess
from marcelle_torch.models.weights import training_metrics


@pytest.fixture(scope="module")
def model(trained_digits):
    return load_model(trained_digits)


def test_trained_accuracy_from_saved_metrics(trained_digits):
    metrics = training_metrics(trained_digits)
    assert metrics is not None, "the checkpoint carries no metrics"
    assert metrics["heldout_accuracy"] >= 0.95, metrics
    assert metrics["heldout_canvas_accuracy"] >= 0.95, metrics


def predict(spec, model, instances):
    with torch.no_grad():
        return [p["label"] for p in postprocess(spec, model(decode_instances(spec, instances)))]


def test_same_digit_drawn_differently_gives_the_same_prediction(trained_digits, model, make_digit):
    """Size of the canvas, position and scale of the digit, and ink polarity do not matter."""
    agree, consistent, total = 0, 0, 0
    for index in range(20):
        variants = [
            make_digit(index, size=size, seed=seed, light_background=light)
            for size, seed, light in [(128, 0, False), (64, 1, False), (300, 2, True), (128, 3, True), (200, 4, False)]
        ]
        truth = variants[0][1]
        labels = predict(trained_digits, model, [inst for inst, _ in variants])
        total += len(labels)
        agree += sum(label == truth for label in labels)
        # The prediction barely depends on the drawing: at most one of a digit's five variants
        # may read differently from the others (a sloppy, tiny or thin rendering can).
        majority = max(labels.count(label) for label in labels)
        assert majority >= len(labels) - 1, (index, truth, labels)
        consistent += majority
    assert consistent / total >= 0.95, f"only {consistent}/{total} variants read as their digit's majority"
    assert agree / total >= 0.9, f"{agree}/{total} correct"


def test_batch_and_single_predictions_match(trained_digits, model, make_digit):
    instances = [make_digit(i)[0] for i in range(8)]
    with torch.no_grad():
        batch = model(decode_instances(trained_digits, instances))
        singles = torch.cat([model(decode_instances(trained_digits, [inst])) for inst in instances])
    assert torch.allclose(batch, singles, atol=1e-5)
