"""Faithfulness metrics: the protocol on hand-made scorers with known evidence, closed-form AUC,
Grad-CAM on the project's model with the prompt and cls tokens dropped, the table end to end."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from helpers import perturbed_model, run_cli
from promptcam.explain.baselines import (
    METHODS,
    TorchExplainer,
    faithfulness_table,
    patch_tokens_to_grid,
)
from promptcam.explain.metrics import (
    FaithfulnessTable,
    Protocol,
    auc,
    curves_for_image,
    energy_in_mask,
    perturbed_images,
    pixel_order,
    pointing_hit,
    score_batched,
    upsample_saliency,
)
from promptcam.train.synthetic import world_images

SIZE, GRID = 32, 8
REGION = (slice(8, 16), slice(20, 28))  # patches (2..3, 5..6) of the 8x8 grid of 4-px patches


def _evidence_image() -> np.ndarray:
    """Grey texture with a red square where the evidence is."""
    rng = np.random.default_rng(1)
    image = rng.integers(100, 140, (SIZE, SIZE, 3)).astype(np.uint8)
    image[REGION] = (230, 30, 30)
    return image


def _region_scorer(images: np.ndarray) -> np.ndarray:
    """A two-class 'model' whose class 0 evidence is the share of red pixels in REGION."""
    region = images[:, REGION[0], REGION[1]].astype(np.int32)
    red = ((region[..., 0] > 200) & (region[..., 1] < 80)).mean(axis=(1, 2))
    return np.stack([red, 1 - red], axis=1)


def _oracle_map() -> np.ndarray:
    grid = np.zeros((GRID, GRID), np.float32)
    grid[2:4, 5:7] = 1.0
    return grid


def test_auc_matches_closed_form() -> None:
    # trapezoid of x^2 on n equal steps: 1/3 + 1/(6 n^2), exactly
    for n in (1, 4, 32):
        x = np.linspace(0, 1, n + 1)
        assert auc(x**2) == pytest.approx(1 / 3 + 1 / (6 * n * n), abs=1e-12)
    assert auc(np.linspace(0, 1, 17)) == pytest.approx(0.5)


def test_protocol_curves_match_closed_form() -> None:
    """Through perturbed_images and the batched scorer: a score (revealed share)^2 gives 1/3 + 1/(6 n^2)."""
    image = np.full((16, 16, 3), 200, np.uint8)
    baseline = np.zeros_like(image)
    steps = 8  # 256 px / 8 = 32 px a step: the fractions are exactly i/8

    def squared_share(batch: np.ndarray) -> np.ndarray:
        share = batch[..., 0].mean(axis=(1, 2)) / 200.0
        return np.stack([share**2, 1 - share**2], axis=1)

    order = pixel_order(np.random.default_rng(0).random((16, 16)), np.arange(256))
    for insertion in (True, False):
        stack = perturbed_images(image, baseline, order, steps, insertion=insertion)
        assert stack.shape == (steps + 1, 16, 16, 3)
        curve = score_batched(squared_share, stack, 0, batch_size=3)
        assert curve[0] == pytest.approx(0.0 if insertion else 1.0)
        assert curve[-1] == pytest.approx(1.0 if insertion else 0.0)
        assert auc(curve) == pytest.approx(1 / 3 + 1 / (6 * steps**2), abs=1e-12)


def test_pixel_order_follows_saliency_and_breaks_ties_by_permutation() -> None:
    saliency = np.array([[0.0, 2.0], [1.0, 1.0]])
    assert pixel_order(saliency, np.array([0, 1, 2, 3])).tolist() == [1, 2, 3, 0]
    assert pixel_order(saliency, np.array([0, 1, 3, 2])).tolist() == [1, 3, 2, 0]
    full = upsample_saliency(_oracle_map(), SIZE)
    assert full.shape == (SIZE, SIZE) and full[REGION].min() > full[:8].max()


def test_oracle_beats_random_and_inverted_maps() -> None:
    image = _evidence_image()
    oracle = _oracle_map()
    maps = {"oracle": oracle, "random": np.random.default_rng(3).random((GRID, GRID)), "inverted": 1 - oracle}
    protocol = Protocol(steps=16, batch_size=50)
    assert _region_scorer(cv2.GaussianBlur(image, (0, 0), 0.25 * SIZE)[None])[0, 0] == 0  # the baseline erases it
    curves = curves_for_image(_region_scorer, image, 0, maps, protocol)
    insertion = {m: auc(c["insertion"]) for m, c in curves.items()}
    deletion = {m: auc(c["deletion"]) for m, c in curves.items()}
    assert insertion["oracle"] > insertion["random"] > insertion["inverted"]
    assert deletion["oracle"] < deletion["random"] < deletion["inverted"]
    assert insertion["oracle"] > 0.8 and deletion["oracle"] < 0.2

    mask = np.zeros((SIZE, SIZE), bool)
    mask[REGION] = True
    assert pointing_hit(oracle, mask) and not pointing_hit(1 - oracle, mask)
    assert energy_in_mask(oracle, mask) > 0.5 > energy_in_mask(1 - oracle, mask)
    assert energy_in_mask(np.ones((GRID, GRID)), mask) == pytest.approx(mask.mean())

    table = FaithfulnessTable(protocol.describe(SIZE))
    table.add_image(curves, maps, mask)
    table.add_image(curves, maps, mask)
    data = table.to_json()
    assert data["images"] == 2 and [r["method"] for r in data["rows"]] == ["oracle", "random", "inverted"]
    assert data["rows"][0]["insertion"] == {"mean": pytest.approx(insertion["oracle"]), "se": 0.0, "n": 2}
    assert "| oracle |" in table.to_markdown() and "deletion ↓" in table.to_markdown()


def test_reshape_keeps_the_patch_tokens_only() -> None:
    classes, grid, dim = 5, 3, 2
    tokens = torch.arange(classes + 1 + grid * grid, dtype=torch.float32)[None, :, None].expand(1, -1, dim)
    folded = patch_tokens_to_grid(tokens, classes, grid)
    assert folded.shape == (1, dim, grid, grid)
    # patch (r, c) is token C + 1 + r * grid + c: no prompt (0..C-1) nor cls (C) is left
    expected = classes + 1 + np.arange(grid * grid).reshape(grid, grid)
    assert np.array_equal(folded[0, 0].numpy(), expected)
    with pytest.raises(Exception, match="prompts, cls"):
        patch_tokens_to_grid(tokens[:, 1:], classes, grid)


def test_grad_cam_layer_cam_and_rollout_on_the_project_model() -> None:
    model = perturbed_model("vit_micro_patch8", 5)
    explainer = TorchExplainer(model)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    classes = [0, 3, 4]
    for method in (explainer.grad_cam, explainer.layer_cam, explainer.eigen_cam, explainer.rollout,
                   explainer.cls_rollout):
        maps = method(pixels, classes)
        assert maps.shape == (3, model.config.grid_size, model.config.grid_size), method.__name__
        assert np.isfinite(maps).all()
        assert all(np.ptp(m) > 0 for m in maps), method.__name__  # not a flat map
    # Grad-CAM explains the class asked for: another target, another map
    assert not np.allclose(explainer.grad_cam(pixels[:1], [0]), explainer.grad_cam(pixels[:1], [1]))


def test_faithfulness_table_on_an_export(tiny_checkpoints, tiny_export, tmp_path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img_{i}.png")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 256, (50 + 10 * i, 70, 3), dtype=np.uint8))
    masks = [np.eye(64, dtype=bool), None, np.ones((20, 20), bool)]
    report = faithfulness_table(tiny_checkpoints["dino"], tiny_export, paths, masks=masks,
                                protocol=Protocol(steps=4, batch_size=16), threads=1, log=lambda _: None)
    (table,) = report.json["tables"]
    assert table["images"] == 3 and table["precision"] == "fp32"
    assert [r["method"] for r in table["rows"]] == list(METHODS)
    for row in table["rows"]:
        assert row["insertion"]["n"] == 3 and 0 <= row["insertion"]["mean"] <= 1
        assert row["pointing_game"]["n"] == 2  # the image without a mask has no pointing game
    assert table["protocol"]["steps"] == 4 and table["protocol"]["pixels_per_step"] == 64 * 64 // 4
    assert "| Prompt-CAM |" in report.markdown and "| Grad-CAM |" in report.markdown


def test_eval_cli_faithfulness(tiny_checkpoints, tiny_export, tmp_path) -> None:
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(tmp_path / "data" / name / f"{i}.jpg"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    result = run_cli("promptcam-eval", "--ckpt", tiny_checkpoints["dino"], "--data", tmp_path / "data",
                     "--faithfulness", "--model", tiny_export, "--images", "3", "--steps", "4", "--threads", "1",
                     "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "out" / "faithfulness.json").read_text())
    assert data["tables"][0]["images"] == 3
    assert "insertion ↑" in (tmp_path / "out" / "faithfulness.md").read_text()
    missing = run_cli("promptcam-eval", "--ckpt", tiny_checkpoints["dino"], "--data", tmp_path / "data",
                      "--faithfulness")
    assert missing.returncode != 0 and "--model" in missing.stderr + missing.stdout


def test_prompt_cam_points_at_traits_on_the_trained_world(trained_world) -> None:
    paths, masks = world_images(trained_world["world"], limit=16)
    report = faithfulness_table(trained_world["ckpt"], trained_world["model"], paths, masks=masks,
                                protocol=Protocol(steps=8), methods=("Prompt-CAM", "random"), threads=1,
                                log=lambda _: None)
    rows = {r["method"]: r for r in report.json["tables"][0]["rows"]}
    assert rows["Prompt-CAM"]["pointing_game"]["mean"] > rows["random"]["pointing_game"]["mean"] + 0.3
    assert rows["Prompt-CAM"]["energy_in_mask"]["mean"] > 2 * rows["random"]["energy_in_mask"]["mean"]
    assert rows["Prompt-CAM"]["insertion"]["mean"] > rows["Prompt-CAM"]["deletion"]["mean"]
