"""AutoImageProcessor: preprocessor_config.json -> pixel_values, with torch alone (no PIL, no torchvision).

Follows transformers' torchvision-backend ViTImageProcessor and ConvNextImageProcessor step for
step: resize (bilinear / bicubic with antialiasing, as torchvision resizes tensors: uint8 images
stay uint8, resized by torch's native uint8 filter on the CPU), ConvNeXt's crop_pct resize +
center crop, optional center crop, then rescale and normalise fused into one
(x - mean / r) / (std / r). Without resizing the output equals transformers' bit for bit.

Accepted images: torch tensors (C, H, W) or (B, C, H, W), numpy arrays (H, W, C) or (H, W)
(channels-first arrays too, detected as transformers does), PIL images when PIL is installed,
or a list of any of these. Legend: B = images, C = channels, H, W = height, width.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from fastx.checkpoints.hub import read_json, resolve_checkpoint

# PIL's resampling codes (what configs store) -> F.interpolate modes.
RESAMPLE_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}
IMAGENET_STANDARD = [0.5, 0.5, 0.5]
PROCESSOR_KINDS = {
    "ViTImageProcessor": "vit",
    "ViTImageProcessorFast": "vit",
    "ViTFeatureExtractor": "vit",
    "ConvNextImageProcessor": "convnext",
    "ConvNextImageProcessorFast": "convnext",
    "ConvNextFeatureExtractor": "convnext",
}
# transformers' class defaults for fields a config omits.
DEFAULTS: dict[str, dict[str, Any]] = {
    "vit": dict(size={"height": 224, "width": 224}, resample=2),
    "convnext": dict(size={"shortest_edge": 384}, resample=3, crop_pct=224 / 256),
}
COMMON_DEFAULTS = dict(
    do_resize=True,
    do_rescale=True,
    rescale_factor=1 / 255,
    do_normalize=True,
    image_mean=IMAGENET_STANDARD,
    image_std=IMAGENET_STANDARD,
    do_center_crop=False,
    crop_size=None,
    do_convert_rgb=False,
)


class BatchFeature(dict):
    """transformers' BatchFeature: a dict whose keys are also attributes (`out.pixel_values`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args, **kwargs) -> BatchFeature:
        return BatchFeature({k: v.to(*args, **kwargs) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


def _size_dict(value: Any, field: str, source: str, default_to_square: bool) -> dict[str, int]:
    """{"height", "width"} or {"shortest_edge"}; a bare int is read as transformers' get_size_dict does."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    if isinstance(value, dict):
        got = {k: v for k, v in value.items() if v is not None}
        if set(got) in ({"height", "width"}, {"shortest_edge"}) and all(
            isinstance(v, int) and v > 0 for v in got.values()
        ):
            return got
    raise ValueError(
        f"{source}: field {field!r} must be {{'height', 'width'}} or {{'shortest_edge'}} with positive ints, "
        f"got {value!r}"
    )


def _floats(value: Any, field: str, source: str) -> list[float]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{source}: field {field!r} must be a number or a list of numbers, got {value!r}")
    return [float(v) for v in values]


class ImageProcessor:
    """ViT / ConvNeXt preprocessing; build it with AutoImageProcessor.from_pretrained or from_dict."""

    def __init__(
        self,
        kind: str,
        do_resize: bool,
        size: dict[str, int],
        resample: int,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: list[float],
        image_std: list[float],
        do_center_crop: bool = False,
        crop_size: dict[str, int] | None = None,
        crop_pct: float | None = None,
        do_convert_rgb: bool = False,
    ):
        self.kind, self.do_resize, self.size, self.resample = kind, do_resize, size, resample
        self.do_rescale, self.rescale_factor = do_rescale, rescale_factor
        self.do_normalize, self.image_mean, self.image_std = do_normalize, image_mean, image_std
        self.do_center_crop, self.crop_size, self.crop_pct, self.do_convert_rgb = (
            do_center_crop,
            crop_size,
            crop_pct,
            do_convert_rgb,
        )

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], source: str = "preprocessor_config.json", kind: str | None = None
    ) -> ImageProcessor:
        """Build from a preprocessor config dict; fields are checked, errors name the field."""
        type_name = data.get("image_processor_type") or data.get("feature_extractor_type")
        if kind is None:
            if type_name not in PROCESSOR_KINDS:
                raise ValueError(
                    f"{source}: image processor {type_name!r} not supported (supported: {', '.join(PROCESSOR_KINDS)})"
                )
            kind = PROCESSOR_KINDS[type_name]
        values = {**COMMON_DEFAULTS, **DEFAULTS[kind]}
        values.update({k: v for k, v in data.items() if k in values and v is not None})
        for field in ("do_resize", "do_rescale", "do_normalize", "do_center_crop", "do_convert_rgb"):
            if not isinstance(values[field], bool):
                raise ValueError(f"{source}: field {field!r} must be bool, got {values[field]!r}")
        if values["resample"] not in RESAMPLE_MODES or isinstance(values["resample"], bool):
            raise ValueError(
                f"{source}: field 'resample' must be one of {sorted(RESAMPLE_MODES)} "
                f"(nearest, bilinear, bicubic), got {values['resample']!r}"
            )
        size = _size_dict(values["size"], "size", source, default_to_square=kind != "convnext")
        if kind == "convnext" and "shortest_edge" not in size:
            raise ValueError(f"{source}: field 'size' must have 'shortest_edge' for ConvNeXt, got {values['size']!r}")
        crop_size = (
            _size_dict(values["crop_size"], "crop_size", source, True) if values["crop_size"] is not None else None
        )
        if values["do_center_crop"] and (crop_size is None or "height" not in crop_size):
            raise ValueError(
                f"{source}: field 'crop_size' must be {{'height', 'width'}} when do_center_crop is true, "
                f"got {values['crop_size']!r}"
            )
        rescale_factor = _floats(values["rescale_factor"], "rescale_factor", source)
        crop_pct = _floats(values["crop_pct"], "crop_pct", source)[0] if kind == "convnext" else None
        if len(rescale_factor) != 1 or rescale_factor[0] == 0 or (crop_pct is not None and crop_pct <= 0):
            raise ValueError(f"{source}: fields 'rescale_factor' and 'crop_pct' must be one non-zero positive number")
        mean, std = (
            _floats(values["image_mean"], "image_mean", source),
            _floats(values["image_std"], "image_std", source),
        )
        if 0.0 in std:
            raise ValueError(f"{source}: field 'image_std' must be non-zero, got {values['image_std']!r}")
        return cls(
            kind,
            values["do_resize"],
            size,
            values["resample"],
            values["do_rescale"],
            rescale_factor[0],
            values["do_normalize"],
            mean,
            std,
            values["do_center_crop"],
            crop_size,
            crop_pct,
            values["do_convert_rgb"],
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"ImageProcessor({fields})"

    # -- steps ----------------------------------------------------------------------------------
    def _resize(self, image: torch.Tensor, height: int, width: int) -> torch.Tensor:  # (C, H, W) -> (C, height, width)
        if tuple(image.shape[-2:]) == (height, width):
            return image  # torchvision returns the image untouched: no resampling round trip
        mode = RESAMPLE_MODES[self.resample]
        # As torchvision (hence transformers) resizes: uint8 natively where torch can (on the CPU:
        # PIL's two-pass fixed-point filter, whose clamped intermediate differs from a float
        # resize by up to ~20 levels near bicubic overshoot), otherwise in float32 and cast back.
        native = image.dtype in (torch.float32, torch.float64) or (
            image.dtype == torch.uint8 and (mode == "nearest" or image.device.type == "cpu")
        )
        x = image if native else image.float()
        antialias = mode != "nearest"
        out = F.interpolate(
            x[None],
            size=(height, width),
            mode=mode,
            align_corners=None if mode == "nearest" else False,
            antialias=antialias,
        )[0]
        if not image.is_floating_point() and not native:
            # Integer images cast back: bicubic overshoot clamped, values rounded.
            info = torch.iinfo(image.dtype)
            return out.clamp_(info.min, info.max).round_().to(image.dtype)
        return out.to(image.dtype)

    def _shortest_edge_size(self, height: int, width: int, shortest: int) -> tuple[int, int]:
        """transformers' get_resize_output_image_size(default_to_square=False): keep the aspect ratio."""
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(shortest * long / short)
        return (new_long, shortest) if width <= height else (shortest, new_long)

    @staticmethod
    def _center_crop(image: torch.Tensor, height: int, width: int) -> torch.Tensor:  # (C, H, W) -> (C, height, width)
        h, w = image.shape[-2:]
        if height > h or width > w:  # zero-pad to at least the crop, split as torchvision does
            pad_w, pad_h = max(width - w, 0), max(height - h, 0)
            image = F.pad(image, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
            h, w = image.shape[-2:]
        top, left = int((h - height) / 2.0), int((w - width) / 2.0)
        return image[..., top : top + height, left : left + width]

    def _resize_step(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        if "height" in self.size:
            return self._resize(image, self.size["height"], self.size["width"])
        shortest = self.size["shortest_edge"]
        if self.kind != "convnext":
            return self._resize(image, *self._shortest_edge_size(h, w, shortest))
        if shortest >= 384:  # ConvNeXt warps to a square at 384 and above (no crop)
            return self._resize(image, shortest, shortest)
        # Below 384: resize the short edge to shortest / crop_pct, then center-crop a square.
        resized = self._resize(image, *self._shortest_edge_size(h, w, int(shortest / self.crop_pct)))
        return self._center_crop(resized, shortest, shortest)

    def _rescale_and_normalize(self, image: torch.Tensor) -> torch.Tensor:
        if self.do_normalize:
            mean, std = (
                torch.tensor(self.image_mean, device=image.device),
                torch.tensor(self.image_std, device=image.device),
            )
            if self.do_rescale:
                # Fused as transformers does: (x - mean / r) / (std / r) == (x * r - mean) / std.
                mean, std = mean * (1.0 / self.rescale_factor), std * (1.0 / self.rescale_factor)
            return (image.to(torch.float32) - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
        if self.do_rescale:
            return image * self.rescale_factor
        return image

    def preprocess_one(self, image: torch.Tensor) -> torch.Tensor:  # (C, H, W) -> (C, H', W')
        if self.do_resize:
            image = self._resize_step(image)
        if self.do_center_crop:
            image = self._center_crop(image, self.crop_size["height"], self.crop_size["width"])
        return self._rescale_and_normalize(image)

    def __call__(
        self, images, return_tensors: str | None = "pt", device: torch.device | str | None = None
    ) -> BatchFeature:
        """images -> BatchFeature({"pixel_values": (B, C, H, W) float32}).

        With return_tensors=None, pixel_values is a list of (C, H, W) tensors instead.
        """
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors: expected 'pt' or None, got {return_tensors!r}")
        tensors = _as_chw_list(images, "images")
        if self.do_convert_rgb:
            tensors = [t.expand(3, -1, -1) if t.shape[0] == 1 else t for t in tensors]
        processed = [self.preprocess_one(t.to(device) if device is not None else t) for t in tensors]
        if return_tensors is None:
            return BatchFeature(pixel_values=processed)
        shapes = {tuple(p.shape) for p in processed}
        if len(shapes) > 1:
            raise ValueError(
                f"images: processed images differ in shape {sorted(shapes)}; enable do_resize or pass "
                "return_tensors=None"
            )
        return BatchFeature(pixel_values=torch.stack(processed))

    preprocess = __call__


def _channels_first(image: torch.Tensor, name: str) -> torch.Tensor:
    """(H, W), (C, H, W) or (H, W, C) -> (C, H, W); channels-first wins when both fit, as in transformers."""
    if image.dim() == 2:
        return image[None]
    if image.dim() == 3:
        if image.shape[0] in (1, 3, 4):
            return image
        if image.shape[-1] in (1, 3, 4):
            return image.permute(2, 0, 1)
    raise ValueError(
        f"{name}: expected an image (C, H, W) or (H, W, C) with 1, 3 or 4 channels, got shape {tuple(image.shape)}"
    )


def _as_chw_list(images, name: str) -> list[torch.Tensor]:
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{name}: expected at least one image, got an empty {type(images).__name__}")
        return [t for i, item in enumerate(images) for t in _as_chw_list(item, f"{name}[{i}]")]
    if type(images).__module__.startswith("PIL."):
        import numpy as np

        images = np.asarray(images.convert("RGB") if images.mode not in ("RGB", "L") else images)
    if type(images).__module__ == "numpy":
        images = torch.from_numpy(images.copy())
    if not isinstance(images, torch.Tensor):
        raise ValueError(
            f"{name}: expected a torch tensor, numpy array, PIL image or a list of them, got {type(images).__name__}"
        )
    if images.dim() == 4:
        return [_channels_first(t, f"{name}[{i}]") for i, t in enumerate(images.unbind(0))]
    return [_channels_first(images, name)]


class AutoImageProcessor:
    def __init__(self):
        raise TypeError("AutoImageProcessor is a factory: use AutoImageProcessor.from_pretrained(...)")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> ImageProcessor:
        """Read preprocessor_config.json of a Hub repo id or a local folder."""
        hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
        folder = resolve_checkpoint(name_or_path, **hub)
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            raise OSError(f"{name_or_path}: no preprocessor_config.json (the checkpoint has no image processor)")
        data = read_json(path)
        kind = None
        if not (data.get("image_processor_type") or data.get("feature_extractor_type")):
            # Old configs without a type: the model's architecture decides.
            config = folder / "config.json"
            model_type = read_json(config).get("model_type") if config.is_file() else None
            kind = model_type if model_type in DEFAULTS else None
            if kind is None:
                raise ValueError(f"{path}: missing required field 'image_processor_type'")
        return ImageProcessor.from_dict(data, str(path), kind=kind)


__all__ = ["AutoImageProcessor", "ImageProcessor", "BatchFeature"]
