"""`image-classification`: labels and scores per image (ViT, ConvNeXt), as transformers' pipeline.

Images come as PIL images, local file paths (opened with PIL, turned upright by their EXIF
orientation and converted to RGB, as transformers' load_image does), numpy arrays or torch
tensors; fastx.processing's image processor makes the pixel values. `top_k` (5, at most the
number of labels) and `function_to_apply` as in text classification.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from fastx.pipelines.base import Params, Pipeline, id2label
from fastx.pipelines.text_classification import apply_function, check_function, check_top_k, default_function


def load_image(image: Any, task: str):
    """A path or a PIL image -> an upright RGB PIL image; arrays and tensors pass through."""
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return image
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ValueError(f"{task}: reading {type(image).__name__} images needs Pillow: pip install pillow") from None
    if isinstance(image, (str, os.PathLike)):
        text = str(image)
        if text.startswith(("http://", "https://")):
            raise ValueError(f"{task}: inputs: fastx does not download images; save {text!r} and pass its path")
        if not os.path.isfile(text):
            raise OSError(f"{task}: inputs: no image file at {text!r}")
        try:
            image = Image.open(text)
            image.load()
        except OSError as exc:
            raise OSError(f"{task}: inputs: cannot read the image {text!r} ({exc})") from None
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"{task}: inputs: expected a PIL image, a path, a numpy array or a torch tensor, got {type(image).__name__}"
        )
    return ImageOps.exif_transpose(image).convert("RGB")


class ImageClassificationPipeline(Pipeline):
    task = "image-classification"

    def __init__(self, model, image_processor=None, **kwargs):
        if image_processor is None:
            raise ValueError("image_processor: the image-classification pipeline needs one, got None")
        super().__init__(model, image_processor=image_processor, **kwargs)

    def _sanitize_parameters(self, top_k=None, function_to_apply=None, **kwargs) -> Params:
        super()._sanitize_parameters(**kwargs)
        post: dict[str, Any] = {}
        if top_k is not None:
            check_top_k(self.task, top_k, allow_none=False)
            post["top_k"] = top_k
        function = check_function(self.task, function_to_apply)
        if function is not None:
            post["function"] = function
        return {}, {}, post

    def __call__(self, inputs=None, batch_size=None, images=None, **kwargs):
        inputs = images if images is not None else inputs
        if inputs is None:
            raise ValueError(f"{self.task}: inputs: expected an image or a list of images, got None")
        return super().__call__(inputs, batch_size, **kwargs)

    def preprocess(self, item) -> list[dict[str, Any]]:
        pixels = self.image_processor(load_image(item, self.task), return_tensors="pt")["pixel_values"]
        return [{"pixel_values": pixels[0]}]

    def forward(self, features, **params) -> list[torch.Tensor]:
        pixels = torch.stack([f["pixel_values"] for f in features]).to(device=self.device, dtype=self.model.dtype)
        return list(self.model(pixels)[0].float().cpu().unbind(0))

    def postprocess(self, features, outputs, top_k: int = 5, function: str | None = None):
        labels = id2label(self.model.config)
        scores = apply_function(outputs[0].numpy(), function or default_function(self.model.config))
        ranked = sorted(
            ({"label": labels[i], "score": s.item()} for i, s in enumerate(scores)),
            key=lambda x: x["score"],
            reverse=True,
        )
        return ranked[: min(top_k, len(labels))]
