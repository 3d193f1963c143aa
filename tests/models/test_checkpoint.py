"""Project checkpoints, official import, promptcam-convert, and clear errors for bad files."""

from __future__ import annotations

import pytest
import torch

from helpers import TINY, official_checkpoint, perturbed_model, project_checkpoint, run_cli
from promptcam.core.errors import CheckpointError, ConfigError
from promptcam.models import ModelConfig
from promptcam.models.checkpoint import clean_class_name, load_checkpoint, load_model


def _same_outputs(a, b) -> None:
    images = torch.randn(2, 3, a.config.img_size, a.config.img_size)
    with torch.no_grad():
        torch.testing.assert_close(a(images)[0], b(images)[0], atol=0, rtol=0)


@pytest.mark.parametrize("layout", sorted(TINY))
def test_project_checkpoint_round_trip(layout: str, tmp_path) -> None:
    model = perturbed_model(**TINY[layout])
    path = project_checkpoint(model, tmp_path / "model.pt")
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == "promptcam" and blob["version"] == 1
    assert ModelConfig.from_dict(blob["config"]) == model.config
    _same_outputs(model, load_model(path))


@pytest.mark.parametrize("layout", sorted(TINY))
def test_official_import_infers_config(layout: str, tmp_path) -> None:
    model = perturbed_model(**TINY[layout])
    path = official_checkpoint(model, tmp_path / "official.pth")
    config, _ = load_checkpoint(path)
    ref = model.config
    assert (config.patch_size, config.embed_dim, config.depth, config.num_classes, config.layerscale, config.img_size) \
        == (ref.patch_size, ref.embed_dim, ref.depth, ref.num_classes, ref.layerscale, ref.img_size)
    assert config.mean == config.std == (0.5, 0.5, 0.5)
    assert config.class_names == [f"class_{i:03d}" for i in range(ref.num_classes)]
    _same_outputs(model, load_model(path, num_heads=ref.num_heads))


def test_official_vitb_layouts_are_recognised(tmp_path) -> None:
    for arch, layerscale, patch in (("dino_vitb16", False, 16), ("dinov2_vitb14", True, 14)):
        model = perturbed_model(arch, 3, depth=2)
        config, _ = load_checkpoint(official_checkpoint(model, tmp_path / f"{arch}.pth"))
        assert config.arch == arch and config.layerscale == layerscale and config.patch_size == patch
        assert config.num_heads == 12 and config.img_size == 224
        assert config.num_patches == (196 if patch == 16 else 256)


def test_convert_cli_with_class_names(tmp_path) -> None:
    model = perturbed_model(**TINY["dino"])
    official = official_checkpoint(model, tmp_path / "official.pth")
    names = tmp_path / "classes.txt"
    names.write_text("".join(f"{i + 1:03d}.Bird_{i}\n" for i in range(model.num_classes)))
    out = tmp_path / "model.pt"
    result = run_cli("promptcam-convert", official, "--classes", names, "--num-heads", model.config.num_heads,
                     "-o", out)
    assert result.returncode == 0, result.stderr
    converted = load_model(out)
    assert converted.config.class_names == [f"Bird {i}" for i in range(model.num_classes)]
    _same_outputs(model, converted)


def test_clean_class_names() -> None:
    assert clean_class_name("001.Black_footed_Albatross") == "Black footed Albatross"
    assert clean_class_name("golden_retriever") == "golden retriever"
    assert clean_class_name(" Scott Oriole ") == "Scott Oriole"


# ---- bad inputs: one clear error naming the key or file ---------------------------------------

@pytest.fixture
def official_sd() -> dict[str, torch.Tensor]:
    return perturbed_model(**TINY["dinov2"]).state_dict()


def _write(tmp_path, sd, name="bad.pth"):
    path = tmp_path / name
    torch.save({"model_state_dict": sd}, path)
    return path


def test_missing_key_is_named(tmp_path, official_sd) -> None:
    del official_sd["blocks.1.mlp.fc2.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks.1.mlp.fc2.bias'\]"):
        load_model(_write(tmp_path, official_sd))


def test_missing_layerscale_key_is_named(tmp_path, official_sd) -> None:
    del official_sd["blocks.0.ls2.gamma"]
    with pytest.raises(CheckpointError, match="blocks.0.ls2.gamma"):
        load_model(_write(tmp_path, official_sd))


def test_unexpected_key_is_named(tmp_path, official_sd) -> None:
    official_sd["blocks.0.attn.extra"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['blocks.0.attn.extra'\]"):
        load_model(_write(tmp_path, official_sd))


def test_shape_mismatch_is_named(tmp_path, official_sd) -> None:
    official_sd["head.weight"] = torch.zeros(2, official_sd["head.weight"].shape[1])
    with pytest.raises(CheckpointError, match=r"'head.weight' has shape \(2, 64\)"):
        load_model(_write(tmp_path, official_sd))


@pytest.mark.parametrize(("key", "shape"), [
    ("pos_embed", (17,)), ("pos_embed", (1, 1, 64)), ("pos_embed", (1, 5, 32)), ("blocks.0.mlp.fc1.weight", (256,)),
])
def test_malformed_shapes_before_indexing_are_named(tmp_path, official_sd, key: str, shape: tuple) -> None:
    """Shapes that would make config inference index out of range are a clear error, not an IndexError."""
    official_sd[key] = torch.zeros(shape)
    with pytest.raises(CheckpointError, match=f"'{key}' has shape"):
        load_model(_write(tmp_path, official_sd))


def test_prompt_layers_must_match_depth(tmp_path, official_sd) -> None:
    official_sd["vpt.prompt_embeddings"] = official_sd["vpt.prompt_embeddings"][:1]
    with pytest.raises(CheckpointError, match="prompt_embeddings' has 1 layers but the backbone has 2"):
        load_model(_write(tmp_path, official_sd))


def test_wrong_number_of_class_names(tmp_path, official_sd) -> None:
    with pytest.raises(CheckpointError, match="3 class names given but the checkpoint has 4 prompts"):
        load_model(_write(tmp_path, official_sd), class_names=["a", "b", "c"])


def test_not_a_checkpoint(tmp_path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights")
    with pytest.raises(CheckpointError, match=r"notes.pt: not a readable PyTorch checkpoint"):
        load_model(path)


def test_truncated_checkpoint(tmp_path, official_sd) -> None:
    good = _write(tmp_path, official_sd, "good.pth")
    data = good.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated.pth: not a readable PyTorch checkpoint"):
        load_model(path)


def test_unknown_dict_format(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"other.pt: unknown checkpoint format \(top-level keys: weights\)"):
        load_model(path)


@pytest.mark.parametrize("kind", ["missing", "empty", "directory"])
def test_missing_empty_or_directory(tmp_path, kind: str) -> None:
    path = tmp_path / "model.pt"
    if kind == "empty":
        path.touch()
    elif kind == "directory":
        path.mkdir()
    message = {"missing": "not found", "empty": "is empty", "directory": "is a directory"}[kind]
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_newer_project_version_is_refused(tmp_path) -> None:
    model = perturbed_model(**TINY["dino"])
    path = project_checkpoint(model, tmp_path / "model.pt")
    blob = torch.load(path, weights_only=True)
    blob["version"] = 2
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="version 2 is not supported"):
        load_model(path)


def test_config_rejects_inconsistent_values() -> None:
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        ModelConfig(arch="x", img_size=65, patch_size=8, embed_dim=64, depth=1, num_heads=2, num_classes=2)
    with pytest.raises(ConfigError, match="unknown model config keys"):
        ModelConfig.from_dict({"arch": "x", "bogus": 1})
    with pytest.raises(ConfigError, match="class names are not unique"):
        ModelConfig(arch="x", img_size=64, patch_size=8, embed_dim=64, depth=1, num_heads=2, num_classes=2,
                    class_names=["a", "a"])
