"""AutoImageProcessor (torch only) against hand-written references and, where torchvision is installed, transformers.

transformers' ViTImageProcessor / ConvNextImageProcessor need torchvision (or PIL for the PIL
backend); where those are missing the comparison tests skip and the hand-written references
below pin the same semantics: the fused rescale+normalise, the aspect-ratio arithmetic,
ConvNeXt's crop_pct resize and center crop, and antialiased resampling that reproduces linear
ramps at pixel centers (align_corners=False).
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastx.processing.image_processor import AutoImageProcessor, ImageProcessor

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
VIT = {
    "image_processor_type": "ViTImageProcessor",
    "do_resize": True,
    "size": {"height": 32, "width": 32},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5] * 3,
    "image_std": [0.5] * 3,
}
CONVNEXT = {
    "image_processor_type": "ConvNextImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 32},
    "crop_pct": 0.875,
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
}


def _uint8(*shape):
    return torch.randint(0, 256, shape, dtype=torch.uint8)


def _normalized(x_uint8, mean, std):  # (C, H, W) uint8 -> the unfused reference, in float64
    m, s = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1), torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    return (x_uint8.double() / 255 - m) / s


def test_without_resize_every_layout_gives_the_same_exact_result():
    processor = ImageProcessor.from_dict(dict(CONVNEXT, do_resize=False))
    images = _uint8(2, 3, 7, 11)  # prime, non-square
    batch = processor(images).pixel_values
    assert batch.shape == (2, 3, 7, 11) and batch.dtype == torch.float32
    # transformers fuses rescale into normalise: (x - mean / r) / (std / r), in float32.
    mean = (torch.tensor(IMAGENET_MEAN) * 255.0).view(-1, 1, 1)
    std = (torch.tensor(IMAGENET_STD) * 255.0).view(-1, 1, 1)
    assert torch.equal(batch, (images.float() - mean) / std)
    torch.testing.assert_close(
        batch.double(), torch.stack([_normalized(i, IMAGENET_MEAN, IMAGENET_STD) for i in images]), atol=1e-5, rtol=0
    )
    hwc = [np.ascontiguousarray(i.permute(1, 2, 0).numpy()) for i in images]
    for other in (processor(hwc), processor([images[0], images[1]]), processor([hwc[0], images[1:]])):
        assert torch.equal(other.pixel_values, batch)
    assert torch.equal(processor(images[1]).pixel_values, batch[1:])


def test_same_size_resize_is_the_identity():
    processor = ImageProcessor.from_dict(dict(VIT, do_rescale=False, do_normalize=False))
    image = torch.rand(3, 32, 32)
    assert torch.equal(processor(image)["pixel_values"][0], image)


@pytest.mark.parametrize("resample", [2, 3])
def test_downscale_keeps_constants_and_linear_ramps(resample):
    processor = ImageProcessor.from_dict(
        dict(VIT, size={"height": 13, "width": 32}, resample=resample, do_rescale=False, do_normalize=False)
    )
    constant = processor(torch.full((3, 39, 64), 0.25)).pixel_values
    torch.testing.assert_close(constant, torch.full_like(constant, 0.25), atol=1e-6, rtol=0)
    # A ramp f(x) = x sampled 64 -> 32: output pixel j centers on input x = 2j + 0.5 (align_corners=False);
    # symmetric (antialiased) filters reproduce a linear function there, away from the borders.
    ramp = torch.arange(64, dtype=torch.float32).expand(3, 39, 64)
    out = processor(ramp).pixel_values[0]
    expected = (2 * torch.arange(32, dtype=torch.float32) + 0.5).expand(3, 13, 32)
    torch.testing.assert_close(out[..., 3:-3], expected[..., 3:-3], atol=1e-4, rtol=0)


def test_uint8_images_stay_integers_after_resizing():
    processor = ImageProcessor.from_dict(
        dict(CONVNEXT, size={"shortest_edge": 17}, do_rescale=False, do_normalize=False)
    )
    out = processor(_uint8(3, 50, 41)).pixel_values
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 17, 17)
    # With rescaling, the value is the rounded integer / 255, like torchvision's uint8 resize.
    scaled = ImageProcessor.from_dict(dict(CONVNEXT, size={"shortest_edge": 17}, do_normalize=False))
    image = _uint8(3, 50, 41)
    values = scaled(image).pixel_values * 255
    torch.testing.assert_close(values, values.round(), atol=1e-4, rtol=0)


def test_convnext_crop_pct_resize_then_center_crop():
    processor = ImageProcessor.from_dict(dict(CONVNEXT, do_rescale=False, do_normalize=False))
    image = torch.rand(3, 100, 60)
    # shortest edge 32 < 384: short edge -> int(32 / 0.875) = 36, long edge int(36 * 100 / 60) = 60,
    # then the center 32 x 32: top int((60 - 32) / 2) = 14, left int((36 - 32) / 2) = 2.
    resized = F.interpolate(image[None], size=(60, 36), mode="bicubic", align_corners=False, antialias=True)[0]
    assert torch.equal(processor(image).pixel_values[0], resized[:, 14:46, 2:34])
    # 384 and above: warp to a square, no crop.
    warped = ImageProcessor.from_dict(dict(CONVNEXT, size={"shortest_edge": 384}, do_rescale=False, do_normalize=False))
    small = torch.rand(3, 20, 30)
    expected = F.interpolate(small[None], size=(384, 384), mode="bicubic", align_corners=False, antialias=True)[0]
    assert torch.equal(warped(small).pixel_values[0], expected)


def test_vit_shortest_edge_keeps_aspect_ratio_and_center_crop_pads():
    processor = ImageProcessor.from_dict(dict(VIT, size={"shortest_edge": 32}, do_rescale=False, do_normalize=False))
    assert processor(torch.rand(3, 40, 50)).pixel_values.shape == (1, 3, 32, 40)  # 50 * 32 / 40 = 40
    assert processor(torch.rand(3, 51, 23)).pixel_values.shape == (1, 3, 70, 32)  # int(51 * 32 / 23) = 70
    crop = ImageProcessor.from_dict(
        dict(
            VIT,
            do_resize=False,
            do_center_crop=True,
            crop_size={"height": 6, "width": 9},
            do_rescale=False,
            do_normalize=False,
        )
    )
    image = torch.rand(3, 4, 11)
    out = crop(image).pixel_values[0]
    expected = torch.zeros(3, 6, 9)
    expected[:, 1:5] = image[:, :, 1:10]  # rows padded 1 above / 1 below, columns cropped from 1
    assert torch.equal(out, expected)


def test_legacy_int_size_and_grayscale_conversion():
    processor = ImageProcessor.from_dict(
        {"feature_extractor_type": "ViTFeatureExtractor", "size": 16, "do_convert_rgb": True}
    )
    assert processor.size == {"height": 16, "width": 16} and processor.resample == 2
    assert processor(np.zeros((20, 30), dtype=np.uint8)).pixel_values.shape == (1, 3, 16, 16)


def test_from_pretrained_reads_the_folder(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(CONVNEXT))
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.kind == "convnext" and processor.crop_pct == 0.875 and processor.image_std == IMAGENET_STD
    untyped = {k: v for k, v in CONVNEXT.items() if k != "image_processor_type"}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(untyped))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "convnext"}))
    assert AutoImageProcessor.from_pretrained(tmp_path).kind == "convnext"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_processor_type": "CLIPImageProcessor"}, r"image processor 'CLIPImageProcessor' not supported"),
        ({"do_resize": "yes"}, r"field 'do_resize' must be bool"),
        ({"resample": 1}, r"field 'resample' must be one of \[0, 2, 3\]"),
        ({"size": {"height": 32}}, r"field 'size' must have 'shortest_edge' for ConvNeXt|field 'size' must be"),
        ({"image_mean": "0.5"}, r"field 'image_mean' must be a number or a list of numbers"),
        ({"image_std": [0.5, 0.0, 0.5]}, r"field 'image_std' must be non-zero"),
    ],
)
def test_broken_config_names_the_field(tmp_path, change, message):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(dict(CONVNEXT, **change)))
    with pytest.raises(ValueError, match=message):
        AutoImageProcessor.from_pretrained(tmp_path)


def test_missing_config_and_bad_inputs(tmp_path):
    with pytest.raises(OSError, match="no preprocessor_config.json"):
        AutoImageProcessor.from_pretrained(tmp_path)
    processor = ImageProcessor.from_dict(dict(VIT, do_resize=False))
    with pytest.raises(ValueError, match=r"return_tensors: expected 'pt' or None, got 'np'"):
        processor(_uint8(3, 4, 4), return_tensors="np")
    with pytest.raises(
        ValueError, match=r"images: expected an image \(C, H, W\) or \(H, W, C\).*got shape \(5, 6, 7\)"
    ):
        processor(torch.zeros(5, 6, 7))
    with pytest.raises(ValueError, match=r"images: expected a torch tensor, numpy array, PIL image"):
        processor("cat.jpg")
    with pytest.raises(ValueError, match="images: expected at least one image"):
        processor([])
    with pytest.raises(ValueError, match="processed images differ in shape"):
        processor([_uint8(3, 4, 4), _uint8(3, 5, 4)])
    assert [p.shape for p in processor([_uint8(3, 4, 4), _uint8(3, 5, 4)], return_tensors=None).pixel_values] == [
        (3, 4, 4),
        (3, 5, 4),
    ]


@pytest.mark.parametrize(
    "config",
    [
        VIT,
        dict(VIT, size={"height": 24, "width": 40}, resample=3),
        CONVNEXT,
        dict(CONVNEXT, size={"shortest_edge": 384}, resample=2),
    ],
)
def test_matches_transformers_image_processors(config):
    pytest.importorskip("torchvision")  # transformers' torch image processors are torchvision-backed
    import transformers

    hf_class = (
        transformers.ConvNextImageProcessor
        if "ConvNext" in config["image_processor_type"]
        else transformers.ViTImageProcessor
    )
    reference = hf_class(**{k: v for k, v in config.items() if k != "image_processor_type"})
    processor = ImageProcessor.from_dict(config)
    floats = [torch.rand(3, 45, 61), torch.rand(3, 61, 45)]
    for image in floats:  # float input: the same interpolation, so equal to float rounding
        expected = reference(image, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(processor(image).pixel_values, expected, atol=1e-5, rtol=0)
    # uint8 input on the CPU: both resize with torch's native uint8 filter (torchvision uses it for
    # bicubic always, for bilinear on AVX2 / AVX512 / arm CPUs; elsewhere it rounds a float resize,
    # at most one level (1 / 255 / std) from this).
    image = _uint8(3, 45, 61)
    expected = reference(image, return_tensors="pt")["pixel_values"]
    diff = (processor(image).pixel_values - expected).abs()
    assert diff.max() <= 1 / 255 / min(config["image_std"]) + 1e-5 and diff.mean() < 1e-3
    if config["resample"] == 3 or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert diff.max() <= 1e-5


def test_pil_images_match_numpy_arrays():
    Image = pytest.importorskip("PIL.Image")
    array = _uint8(12, 9, 3).numpy()
    processor = ImageProcessor.from_dict(VIT)
    assert torch.equal(processor(Image.fromarray(array)).pixel_values, processor(array).pixel_values)
