"""Loading GGUF files with their block weights kept (fastx.models.gguf_blocks) against the dequantized load.

A tiny Llama GGUF written with the `gguf` package mixes every kind of tensor a real file holds: Q8_0
embeddings, K-quant and legacy projections, fused pieces of one format (merged) and of several (kept as
row groups), F16 and F32 projections and a Q3_K one (no fastx dequantizer: the general loader's job).
Kept and dequantized loads must hold the same weights exactly and give the same logits. On the default
SmolLM2 Q4_1 file: greedy tokens equal the dequantized model's, and the weights take no more memory than
the file (<= 1.15x).
"""

import os

import numpy as np
import pytest
import torch
from torch import nn

gguf = pytest.importorskip("gguf")

from fastx.models import AutoModelForCausalLM  # noqa: E402
from fastx.ops.linear import Linear  # noqa: E402
from fastx.ops.quant_linear import QuantizedEmbedding, QuantizedLinear  # noqa: E402

HIDDEN, INTER, VOCAB, HEADS, KV_HEADS, HEAD_DIM = 256, 512, 64, 4, 2, 64
# byte offsets of the fp16 fields of K-quant blocks (ggml-common.h): kept small so activations stay finite
K_FP16_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "Q3_K": (108,)}
LAYERS = [
    {"attn_q": "Q4_K", "attn_k": "Q4_K", "attn_v": "Q6_K", "attn_output": "Q5_K",
     "ffn_gate": "Q4_0", "ffn_up": "Q4_0", "ffn_down": "Q5_1"},
    {"attn_q": "Q8_0", "attn_k": "Q8_0", "attn_v": "Q8_0", "attn_output": "F32",
     "ffn_gate": "Q4_1", "ffn_up": "Q5_0", "ffn_down": "Q3_K"},
]  # fmt: skip


def _tensor(rng, fmt: str, rows: int, cols: int) -> tuple[np.ndarray, object]:
    """(data, raw dtype for GGUFWriter) of a (rows, cols) weight in `fmt`."""
    qtype = gguf.GGMLQuantizationType[fmt]
    if fmt == "F32":
        return rng.standard_normal((rows, cols)).astype(np.float32) * 0.05, None
    if fmt in K_FP16_FIELDS:  # no quantizer in the package: valid random blocks
        block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(rows, cols // block, nbytes), dtype=np.uint8)
        for offset in K_FP16_FIELDS[fmt]:
            scale = rng.uniform(-2e-3, 2e-3, size=raw.shape[:2]).astype(np.float16)
            raw[..., offset : offset + 2] = scale.view(np.uint8).reshape(*raw.shape[:2], 2)
        return raw.reshape(rows, -1), qtype
    quantized = gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32) * 0.05, qtype)
    return quantized, qtype


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf_blocks") / "tiny-llama.gguf"
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_block_count(len(LAYERS))
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTER)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    shapes = {"attn_q": (HEADS * HEAD_DIM, HIDDEN), "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN),
              "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN), "attn_output": (HIDDEN, HEADS * HEAD_DIM),
              "ffn_gate": (INTER, HIDDEN), "ffn_up": (INTER, HIDDEN), "ffn_down": (HIDDEN, INTER)}  # fmt: skip
    tensors = {
        "token_embd.weight": _tensor(rng, "Q8_0", VOCAB, HIDDEN),
        "output.weight": _tensor(rng, "F16", VOCAB, HIDDEN),
    }
    tensors["output_norm.weight"] = (1 + 0.1 * rng.standard_normal(HIDDEN).astype(np.float32), None)
    for i, formats in enumerate(LAYERS):
        for stem, fmt in formats.items():
            tensors[f"blk.{i}.{stem}.weight"] = _tensor(rng, fmt, *shapes[stem])
        for norm in ("attn_norm", "ffn_norm"):
            tensors[f"blk.{i}.{norm}.weight"] = (1 + 0.1 * rng.standard_normal(HIDDEN).astype(np.float32), None)
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_modules_keep_the_files_formats(tiny_gguf):
    model = AutoModelForCausalLM.from_pretrained(tiny_gguf, dtype="auto")
    first, second = model.model.layers
    assert isinstance(model.model.embed_tokens, QuantizedEmbedding) and model.model.embed_tokens.fmt == "Q8_0"
    assert model.lm_head.formats == ("F16",)  # untied, F16 stays 16-bit
    assert first.self_attn.qkv_proj.formats == ("Q4_K", "Q6_K")  # q and k merged, v its own group
    assert first.self_attn.qkv_proj.group_rows == ((HEADS + KV_HEADS) * HEAD_DIM, KV_HEADS * HEAD_DIM)
    assert first.mlp.gate_up_proj.formats == ("Q4_0",) and first.mlp.down_proj.formats == ("Q5_1",)
    assert first.self_attn.o_proj.formats == ("Q5_K",)
    assert second.self_attn.qkv_proj.formats == ("Q8_0",) and second.mlp.gate_up_proj.formats == ("Q4_1", "Q5_0")
    assert type(second.self_attn.o_proj) is Linear  # F32: an ordinary parameter
    assert type(second.mlp.down_proj) is Linear and second.mlp.down_proj.weight.dtype == torch.float32  # Q3_K


def test_kept_and_dequantized_loads_agree(tiny_gguf):
    kept = AutoModelForCausalLM.from_pretrained(tiny_gguf, dtype="auto")
    dense = AutoModelForCausalLM.from_pretrained(tiny_gguf, dtype="float32")
    assert not any(isinstance(m, (QuantizedLinear, QuantizedEmbedding)) for m in dense.modules())
    dense_modules = dict(dense.named_modules())
    for name, module in kept.named_modules():
        if isinstance(module, QuantizedLinear):  # q/k rows un-permuted as whole block rows
            assert torch.equal(module.dequantized_weight(), dense_modules[name].weight), name
    ids = torch.tensor([[1, 5, 9, 63, 0, 2, 17], [3, 3, 3, 8, 40, 41, 42]])
    torch.testing.assert_close(kept(ids).logits, dense(ids).logits)
    assert torch.equal(kept.generate(ids, max_new_tokens=8), dense.generate(ids, max_new_tokens=8))


def test_default_q4_1_file_greedy_tokens_and_memory(smollm2_gguf):
    kept = AutoModelForCausalLM.from_pretrained(smollm2_gguf, dtype="auto")
    dense = AutoModelForCausalLM.from_pretrained(smollm2_gguf, dtype=torch.float32)
    assert kept.lm_head.qweight_0 is kept.model.embed_tokens.qweight  # tied: one copy of the Q8_0 table
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314], [1, 1782, 253, 8541, 30, 198]])
    # the dequantized path's tokens are transformers' (tests/engine: greedy equality in fp32)
    assert torch.equal(kept.generate(ids, max_new_tokens=32), dense.generate(ids, max_new_tokens=32))
    held = {t.data_ptr(): t.numel() * t.element_size() for t in [*kept.parameters(), *kept.buffers()]}
    assert sum(held.values()) <= 1.15 * os.path.getsize(smollm2_gguf)
    assert all(not isinstance(m, nn.Embedding) for m in kept.modules())


def test_default_q4_1_file_int4_logits_close_to_fp32(smollm2_gguf):
    """quantization="int4" on the Q4_1 file runs the file's own 4-bit values in bf16: logits stay close."""
    from fastx.ops.int4_linear import int4_available

    if not int4_available():
        pytest.skip("this torch has no int4 CPU GEMM")
    int4 = AutoModelForCausalLM.from_pretrained(smollm2_gguf, quantization="int4")
    dense = AutoModelForCausalLM.from_pretrained(smollm2_gguf, dtype=torch.float32)
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 1782, 253, 8541, 30, 198]])
    cosine = torch.nn.functional.cosine_similarity(int4(ids).logits.flatten(), dense(ids).logits.flatten(), dim=0)
    assert cosine > 0.999  # measured 0.9998 (2-core AVX2 EPYC); int8 dynamic gave 0.956 there


def test_int8_quantization_from_a_gguf(tiny_gguf):
    from fastx.ops.int8_linear import Int8DynamicLinear, int8_available

    if not int8_available():
        pytest.skip("this torch build has no x86/fbgemm quantized engine")
    dense = AutoModelForCausalLM.from_pretrained(tiny_gguf, dtype="float32")
    int8 = AutoModelForCausalLM.from_pretrained(tiny_gguf, quantization="int8")
    assert isinstance(int8.model.layers[0].self_attn.qkv_proj, Int8DynamicLinear)
    assert isinstance(int8.lm_head, Int8DynamicLinear)
    ids = torch.tensor([[1, 5, 9, 63, 0, 2, 17]])
    a, b = int8(ids).logits.flatten(), dense(ids).logits.flatten()
    assert 0.99 < torch.nn.functional.cosine_similarity(a, b, dim=0) < 1 - 1e-7
    with pytest.raises(ValueError, match=r"quantization: expected None or one of \('int8', 'int4'\), got 'int3'"):
        AutoModelForCausalLM.from_pretrained(tiny_gguf, quantization="int3")


def test_int4_quantization_reuses_the_files_4_bit_values(tiny_gguf):
    """Q4_0/Q4_K projections keep their values (the layer equals dequantized-GGUF weights in bf16 compute);
    Q5/Q6/Q8/Q3_K/F32 ones are rounded to 4 bits; the head is 8-bit."""
    from fastx.ops.gguf_dequant import four_bit_groups
    from fastx.ops.int4_linear import GROUP, Int4Linear, Int8WeightLinear, int4_available

    if not int4_available():
        pytest.skip("this torch has no int4 CPU GEMM")
    kept = AutoModelForCausalLM.from_pretrained(tiny_gguf, dtype="auto")
    int4 = AutoModelForCausalLM.from_pretrained(tiny_gguf, quantization="int4")
    layers = dict(int4.named_modules())
    assert all(isinstance(layers[n], Int4Linear) for n, m in kept.named_modules() if isinstance(m, QuantizedLinear)
               and not n.endswith("lm_head"))  # fmt: skip
    assert isinstance(int4.lm_head, Int8WeightLinear) and isinstance(int4.model.embed_tokens, QuantizedEmbedding)
    gate_up = kept.model.layers[0].mlp.gate_up_proj  # Q4_0 gate and up: one row group of the file's rows
    q, scale, minimum = four_bit_groups(gate_up.qweight_0, "Q4_0")
    x = torch.randn(3, HIDDEN)
    weight = (q.float().view(q.shape[0], -1, GROUP) * scale.unsqueeze(-1) + minimum.unsqueeze(-1)).flatten(1)
    torch.testing.assert_close(weight, gate_up.dequantized_weight(), rtol=1e-6, atol=1e-7)
    expected = x.bfloat16().float() @ weight.T
    got = layers["model.layers.0.mlp.gate_up_proj"](x)
    assert ((got - expected).norm() / expected.norm()) < 1e-2
    ids = torch.tensor([[1, 5, 9, 63, 0, 2, 17]])
    a, b = int4(ids).logits.flatten(), kept(ids).logits.flatten()
    assert 0.99 < torch.nn.functional.cosine_similarity(a, b, dim=0) < 1 - 1e-7


def test_no_dtype_keeps_blocks_where_they_pay(tiny_gguf, monkeypatch):
    """dtype=None: a CPU dequantizes to fp32 (faster there) unless the fp32 weights would not fit."""
    import fastx.models.gguf_blocks as gguf_blocks

    cpu_default = AutoModelForCausalLM.from_pretrained(tiny_gguf)
    assert not any(isinstance(m, (QuantizedLinear, QuantizedEmbedding)) for m in cpu_default.modules())
    assert cpu_default.dtype == torch.float32
    monkeypatch.setattr(gguf_blocks, "_memory_available", lambda: 1024)  # the fp32 weights would not fit
    tight = AutoModelForCausalLM.from_pretrained(tiny_gguf)
    assert isinstance(tight.model.embed_tokens, QuantizedEmbedding)
