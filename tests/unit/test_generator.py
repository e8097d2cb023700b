"""The digits-generator built-in: requests, sampling, determinism, and what it draws."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

from marcelle_torch.errors import InvalidInput
from marcelle_torch.models import digits_generator as g
from marcelle_torch.models import get_spec, load_model


@pytest.fixture(scope="module")
def generator():
    return load_model(get_spec("digits-generator"))


def test_spec_describes_a_generation_model():
    spec = get_spec("digits-generator")
    meta = spec.metadata()
    assert meta["task"] == "generation" and meta["labels"] == [str(i) for i in range(10)]
    assert meta["params"] == {"steps": 50, "guidance": 2.0, "seed": None}
    assert meta["input"]["shape"] == [1] and meta["input"]["range"] == [0, 9]


@pytest.mark.parametrize(
    "input_, params, expected",
    [
        ({"digit": 3}, None, {"digit": 3, "steps": 50, "guidance": 2.0, "seed": None}),
        (7, {"steps": 10, "seed": 4}, {"digit": 7, "steps": 10, "guidance": 2.0, "seed": 4}),
        ([0], {"guidance": 0}, {"digit": 0, "steps": 50, "guidance": 0.0, "seed": None}),
        ({"digit": "9"}, {"steps": None}, {"digit": 9, "steps": 50, "guidance": 2.0, "seed": None}),
    ],
)
def test_parse_request_accepts(input_, params, expected):
    assert g.parse_request(input_, params) == expected


@pytest.mark.parametrize(
    "input_, params, message",
    [
        ({"digit": 10}, None, "input.digit must be an integer from 0 to 9, got 10"),
        ({"digit": True}, None, "input.digit must be an integer from 0 to 9, got True"),
        ({"digit": 2.5}, None, "input.digit must be an integer from 0 to 9"),
        ({"number": 2}, None, "input must be {\"digit\": 0..9}, got keys ['number']"),
        (None, None, "input.digit must be an integer from 0 to 9, got None"),
        (3, {"steps": 0}, "params.steps must be an integer from 1 to 1000, got 0"),
        (3, {"steps": 5000}, "params.steps must be an integer from 1 to 1000"),
        (3, {"guidance": -1}, "params.guidance must be a number from 0 to 10"),
        (3, {"seed": "x"}, "params.seed must be a non-negative integer or null"),
        (3, {"temperature": 1}, "unknown params ['temperature']"),
        (3, [1], "params must be an object"),
    ],
)
def test_parse_request_says_what_is_wrong(input_, params, message):
    with pytest.raises(InvalidInput) as info:
        g.parse_request(input_, params)
    assert message in info.value.message


def test_generate_reports_progress_and_the_current_image_each_step(generator):
    seen = []
    result = g.generate(generator, 4, steps=12, callback=lambda p, x0: seen.append((p, x0.copy())), seed=0)
    assert [p for p, _ in seen] == pytest.approx([(i + 1) / 12 for i in range(12)])
    assert all(x0.shape == (8, 8) and x0.min() >= 0 and x0.max() <= 16 for _, x0 in seen)
    assert np.array_equal(seen[-1][1], result)
    # The prediction sharpens: late images differ little from the result, early ones a lot.
    assert np.abs(seen[0][1] - result).mean() > np.abs(seen[-2][1] - result).mean()

    every = []
    g.generate(generator, 4, steps=12, callback=lambda p, x0: every.append(p), every=5, seed=0)
    assert every == pytest.approx([5 / 12, 10 / 12, 1.0])


def test_a_callback_can_stop_sampling_between_steps(generator):
    calls = []

    def stop_at_third(progress, x0):
        calls.append(progress)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        g.generate(generator, 1, steps=50, callback=stop_at_third)
    assert len(calls) == 3


def test_sampling_with_a_seed_is_deterministic(generator):
    a = g.generate(generator, 2, steps=20, seed=123)
    b = g.generate(generator, 2, steps=20, seed=123)
    c = g.generate(generator, 2, steps=20, seed=124)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_the_classifier_recognises_what_it_draws(generator):
    """10 samples of each digit, drawn on a 128x128 canvas as a sketch, read by ``digits``."""
    accuracy = g.class_accuracy(generator, per_class=10, seed=2024)
    assert accuracy >= 0.8


def test_run_gives_the_result_and_partial_images_as_png_data_urls(generator):
    from PIL import Image

    partials = []
    result = g.run(
        generator,
        {"digit": 6},
        {"steps": 6, "seed": 1},
        lambda progress, partial: partials.append((progress, partial())),
    )
    assert result["label"] == "6" and result["steps"] == 6
    assert len(partials) == 6 and partials[-1][0] == 1.0
    for url in [result["image"]] + [p for _, p in partials]:
        assert url.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2])))
        assert image.size == (128, 128) and image.mode == "L"
    assert np.array(result["counts"]).shape == (8, 8)


def test_training_is_deterministic(tmp_path):
    """Two short trainings with the same seed give the same weights (the cached model's recipe)."""
    spec = get_spec("digits-generator")
    states = []
    for i in range(2):
        target = tmp_path / f"gen-{i}.pt"
        metrics = g.train(spec, target, epochs=1, seed=0)
        assert 0.0 <= metrics["classifier_accuracy"] <= 1.0 and metrics["epochs"] == 1
        states.append(torch.load(target, weights_only=True)["state_dict"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
