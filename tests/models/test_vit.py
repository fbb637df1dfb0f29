"""ViT against transformers: tiny random checkpoints, hidden states and attentions, fp32."""

import json

import pytest
import torch
import transformers

from fastx.models import AutoConfig, AutoModel, AutoModelForImageClassification

# Odd sizes (NUMERICS.md): hidden 80 over 5 heads (head dim 16), 3 layers, intermediate 200;
# image 32 with patch 8 gives 16 patches + [CLS] = 17 tokens (a prime).
TINY = dict(
    hidden_size=80,
    num_hidden_layers=3,
    num_attention_heads=5,
    intermediate_size=200,
    image_size=32,
    patch_size=8,
    num_labels=3,
    attn_implementation="eager",
)
# Non-square image (32 x 48: 24 patches), no q/k/v bias, a narrower pooler, tanh-approximated GELU.
VARIANT = dict(TINY, image_size=[32, 48], qkv_bias=False, pooler_output_size=24, hidden_act="gelu_pytorch_tanh")
CASES = {
    "base": (transformers.ViTModel, AutoModel, TINY),
    "cls": (transformers.ViTForImageClassification, AutoModelForImageClassification, TINY),
    "variant": (transformers.ViTModel, AutoModel, VARIANT),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    hf_class, auto_class, config = CASES[request.param]
    torch.manual_seed(0)
    reference = hf_class(transformers.ViTConfig(**config)).eval()
    with torch.no_grad():  # move norms and biases off 1 / 0 so a swapped or missing one shows
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp(f"vit-{request.param}")
    reference.save_pretrained(folder)
    return reference, auto_class, folder, request.param


def _pixels(reference, batch=3):
    size = reference.config.image_size
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, height, width)


def test_matches_transformers_hidden_states_and_attentions(checkpoint):
    reference, auto_class, folder, case = checkpoint
    model = auto_class.from_pretrained(folder)
    pixels = _pixels(reference)
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True, output_attentions=True)
    got = model(pixels, output_hidden_states=True, output_attentions=True)
    if case == "cls":
        torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=0)
    else:
        torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-4, rtol=0)
        torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-4, rtol=0)
    assert len(got.hidden_states) == len(expected.hidden_states) == 4
    for mine, theirs in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)
    assert len(got.attentions) == len(expected.attentions) == 3
    for mine, theirs in zip(got.attentions, expected.attentions):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    # Without the extra outputs the fast path (varlen attention) gives the same result.
    plain = model(pixels)
    torch.testing.assert_close(plain[0], got[0], atol=1e-5, rtol=0)
    assert plain.hidden_states is None and plain.attentions is None


def test_classification_checkpoint_under_automodel_has_no_pooler(checkpoint):
    reference, auto_class, folder, case = checkpoint
    if case != "cls":
        pytest.skip("only the classification checkpoint lacks pooler weights")
    model = AutoModel.from_pretrained(folder)
    pixels = _pixels(reference, batch=1)
    with torch.no_grad():
        expected = reference.vit(pixels).last_hidden_state
    got = model(pixels)
    assert got.pooler_output is None
    torch.testing.assert_close(got.last_hidden_state, expected, atol=1e-4, rtol=0)


def test_rejects_wrong_image_size_and_channels(checkpoint):
    reference, auto_class, folder, case = checkpoint
    if case != "base":
        pytest.skip("one model is enough")
    model = auto_class.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"pixel_values: expected image size \(32, 32\).*got \(40, 32\)"):
        model(torch.randn(1, 3, 40, 32))
    with pytest.raises(
        ValueError, match=r"pixel_values: expected shape \(batch, 3, height, width\), got \(1, 1, 32, 32\)"
    ):
        model(torch.randn(1, 1, 32, 32))


def test_runs_the_triton_kernels(checkpoint, monkeypatch, device):
    reference, auto_class, folder, case = checkpoint
    if case != "cls":
        pytest.skip("one model is enough to exercise every kernel inside ViT")
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    model = auto_class.from_pretrained(folder, device=device, dtype=torch.float32)
    pixels = _pixels(reference, batch=2)
    with torch.no_grad():
        expected = reference(pixels).logits
    torch.testing.assert_close(model(pixels.to(device)).logits.cpu(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_size": "80"}, r"field 'hidden_size' must be int, got str"),
        ({"num_attention_heads": 7}, r"hidden_size 80 is not a multiple of num_attention_heads 7"),
        ({"image_size": 30}, r"image_size 30 is not a positive multiple of patch_size 8"),
        ({"hidden_act": "relu"}, r"hidden_act 'relu' not supported"),
    ],
)
def test_broken_config_names_the_field(tmp_path, change, message):
    config = transformers.ViTConfig(**TINY).to_dict()
    config.update(change)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        AutoConfig.from_pretrained(tmp_path)
