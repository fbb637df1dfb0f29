"""ConvNeXt against transformers: tiny random checkpoints, per-stage hidden states, fp32."""

import json

import pytest
import torch
import transformers

from fastx.models import AutoConfig, AutoModel, AutoModelForImageClassification

# Four stages of odd widths (16, 24, 40, 48: none a power of two but 16), depths 1-2.
TINY = dict(hidden_sizes=[16, 24, 40, 48], depths=[1, 2, 1, 1], image_size=32, num_labels=3)
CASES = {
    "base": (transformers.ConvNextModel, AutoModel, TINY),
    "cls": (transformers.ConvNextForImageClassification, AutoModelForImageClassification, TINY),
    # No layer scale (no layer_scale_parameter), three stages, tanh GELU.
    "variant": (
        transformers.ConvNextModel,
        AutoModel,
        dict(
            hidden_sizes=[8, 24, 40],
            depths=[2, 1, 1],
            num_stages=3,
            layer_scale_init_value=0.0,
            hidden_act="gelu_new",
            image_size=32,
        ),
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    hf_class, auto_class, config = CASES[request.param]
    torch.manual_seed(0)
    reference = hf_class(transformers.ConvNextConfig(**config)).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.endswith("layer_scale_parameter"):
                p.uniform_(0.5, 1.5)  # the 1e-6 default would hide every block's contribution
            else:  # move norms and biases off 1 / 0 so a swapped or missing one shows
                p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp(f"convnext-{request.param}")
    reference.save_pretrained(folder)
    return reference, auto_class, folder, request.param


@pytest.mark.parametrize("height, width", [(48, 40), (64, 64), (35, 53)])
def test_matches_transformers_with_hidden_states(checkpoint, height, width):
    reference, auto_class, folder, case = checkpoint
    model = auto_class.from_pretrained(folder)
    pixels = torch.randn(2, 3, height, width)
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True)
    got = model(pixels, output_hidden_states=True)
    if case == "cls":
        torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=0)
    else:
        torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-4, rtol=0)
        torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-4, rtol=0)
    assert len(got.hidden_states) == len(expected.hidden_states) == reference.config.num_stages + 1
    for mine, theirs in zip(got.hidden_states, expected.hidden_states):
        assert mine.shape == theirs.shape and mine.is_contiguous()  # NCHW, as transformers gives them
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)
    assert model(pixels).hidden_states is None


def test_non_contiguous_input(checkpoint):
    reference, auto_class, folder, case = checkpoint
    if case != "base":
        pytest.skip("one model is enough")
    model = auto_class.from_pretrained(folder)
    pixels = torch.randn(2, 40, 32, 3).permute(0, 3, 1, 2)  # NHWC storage viewed as NCHW
    with torch.no_grad():
        expected = reference(pixels.contiguous()).pooler_output
    torch.testing.assert_close(model(pixels).pooler_output, expected, atol=1e-4, rtol=0)
    with pytest.raises(
        ValueError, match=r"pixel_values: expected shape \(batch, 3, height, width\), got \(3, 32, 32\)"
    ):
        model(torch.randn(3, 32, 32))


def test_runs_the_triton_kernels(checkpoint, monkeypatch, device):
    reference, auto_class, folder, case = checkpoint
    if case != "cls":
        pytest.skip("one model is enough to exercise every kernel inside ConvNeXt")
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    model = auto_class.from_pretrained(folder, device=device, dtype=torch.float32)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True)
    got = model(pixels.to(device), output_hidden_states=True)
    torch.testing.assert_close(got.logits.cpu(), expected.logits, atol=1e-4, rtol=0)
    for mine, theirs in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine.cpu(), theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_sizes": "16"}, r"field 'hidden_sizes' must be"),
        ({"depths": [1, 2, 1]}, r"field 'depths' has 3 entries, expected num_stages = 4"),
        ({"layer_norm_eps": "1e-6"}, r"field 'layer_norm_eps' must be float, got str"),
    ],
)
def test_broken_config_names_the_field(tmp_path, change, message):
    config = transformers.ConvNextConfig(**TINY).to_dict()
    config.update(change)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        AutoConfig.from_pretrained(tmp_path)
