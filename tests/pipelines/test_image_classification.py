"""image-classification against transformers' pipeline on tiny ViT and ConvNeXt checkpoints.

transformers resizes with torchvision, or with PIL where torchvision is missing; fastx's image
processor follows torchvision (tests/processing/test_image_processor.py). So the images here have
sizes that need no resampling (ViT: 32x32; ConvNeXt: a short edge of 32 / crop_pct = 36, then the
center crop), and equal transformers exactly whatever its backend; with torchvision installed,
resized images are compared too.
"""

import numpy as np
import pytest
import torch

import fastx
from tests.pipelines.conftest import assert_same, transformers

PIL = pytest.importorskip("PIL.Image")
LABELS = {i: f"class_{i}" for i in range(7)}


def _checkpoint(kind: str, folder):
    torch.manual_seed(0)
    if kind == "vit":
        config = transformers.ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            id2label=LABELS,
            label2id={v: k for k, v in LABELS.items()},
            initializer_range=0.3,
        )
        model, processor = transformers.ViTForImageClassification(config), transformers.ViTImageProcessor(size=32)
    else:
        config = transformers.ConvNextConfig(
            num_stages=2,
            hidden_sizes=[8, 16],
            depths=[1, 1],
            id2label=LABELS,
            label2id={v: k for k, v in LABELS.items()},
            initializer_range=0.3,
        )
        model = transformers.ConvNextForImageClassification(config)
        processor = transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


SIZES = {"vit": [(32, 32)] * 3, "convnext": [(36, 36), (36, 50), (47, 36)], "resized": [(40, 56), (64, 64), (33, 47)]}


def _images(folder, sizes) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"image{i}.png"
        PIL.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module", params=["vit", "convnext"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def pair(kind, tmp_path_factory):
    folder = _checkpoint(kind, tmp_path_factory.mktemp(kind))
    task = "image-classification"
    return fastx.pipeline(task, model=folder), transformers.pipeline(task, model=str(folder))


@pytest.fixture(scope="module")
def images(kind, tmp_path_factory):
    return _images(tmp_path_factory.mktemp("images"), SIZES[kind])


@pytest.mark.parametrize("kwargs", [{}, {"top_k": 2}, {"top_k": 50, "function_to_apply": "sigmoid"}])
def test_labels_and_scores_equal_transformers(pair, images, kwargs):
    ours, theirs = pair
    assert_same(ours(images, **kwargs), theirs(images, **kwargs))
    pil = PIL.open(images[0])
    assert_same(ours(pil, **kwargs), theirs(pil, **kwargs))
    array = np.asarray(PIL.open(images[1]).convert("RGB"))
    assert_same(ours(array, **kwargs), theirs(array, **kwargs))


def test_resized_images_equal_transformers_with_torchvision(pair, tmp_path):
    pytest.importorskip("torchvision", reason="transformers resizes as fastx does only with torchvision")
    ours, theirs = pair
    images = _images(tmp_path, SIZES["resized"])
    assert_same(ours(images, top_k=3), theirs(images, top_k=3))


def test_single_batched_and_streamed_inputs_agree(pair, images):
    ours, _ = pair
    one_by_one = [ours(path) for path in images]
    assert_same(ours(images, batch_size=3), one_by_one)
    assert_same(list(ours(iter(images), batch_size=2)), one_by_one)
    assert_same(ours(images=images[0]), one_by_one[0])


def test_missing_file_and_bad_input(pair, tmp_path):
    ours, _ = pair
    with pytest.raises(OSError, match="no image file"):
        ours(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="expected a PIL image"):
        ours(3.5)
    with pytest.raises(ValueError, match="does not download"):
        ours("https://example.org/cat.png")
