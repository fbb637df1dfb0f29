"""Llama family (Llama, Mistral, Qwen2) against transformers: tiny random checkpoints, the paged
KV-cache path against a cache-free recomputation, and SmolLM2-135M's real weights."""

import json

import pytest
import torch
import transformers

from fastx.models import AutoModel, AutoModelForCausalLM
from fastx.models.attention import AttentionMetadata
from fastx.models.llama import LlamaConfig, LlamaForCausalLM, LlamaModel

VOCAB = 101
# Odd sizes (NUMERICS.md): MHA with hidden 80 over 5 heads, GQA with 6 heads over 2 kv heads
# (hidden 96, head dim 16); 3 layers, intermediate 200; an eps unlike the default.
MHA = dict(vocab_size=VOCAB, hidden_size=80, num_attention_heads=5, num_key_value_heads=5)
GQA = dict(vocab_size=VOCAB, hidden_size=96, num_attention_heads=6, num_key_value_heads=2, head_dim=16)
COMMON = dict(intermediate_size=200, num_hidden_layers=3, max_position_embeddings=64, rms_norm_eps=1e-5)
# llama3 with theta 1e4, head dim 16 and original context 32: wavelengths 6.3 (< 8: kept), 19.9
# (8..32: blended) and the rest (> 32: divided by factor) exercise all three bands of the rescaling.
LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
VARIANTS = {
    "llama-mha-tied": (transformers.LlamaForCausalLM, {**MHA, "tie_word_embeddings": True}),
    "llama-gqa-bias": (transformers.LlamaForCausalLM, {**GQA, "attention_bias": True, "mlp_bias": True}),
    "llama-gqa-llama3": (transformers.LlamaForCausalLM, {**GQA, "rope_parameters": LLAMA3}),
    "llama-mha-linear": (
        transformers.LlamaForCausalLM,
        {**MHA, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},
    ),
    "qwen2": (
        transformers.Qwen2ForCausalLM,
        {**GQA, "tie_word_embeddings": True, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
    ),
    "mistral": (transformers.MistralForCausalLM, {**GQA, "sliding_window": None}),
}


def _randomize(model):
    """Weights large enough that attention is peaked (transformers' 0.02 init gives near-uniform
    attention, which would hide a wrong rotary angle) and norm weights that are not all ones."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return model


def _tiny(hf_class, kwargs, folder):
    config_class = {
        transformers.LlamaForCausalLM: transformers.LlamaConfig,
        transformers.Qwen2ForCausalLM: transformers.Qwen2Config,
        transformers.MistralForCausalLM: transformers.MistralConfig,
    }[hf_class]
    torch.manual_seed(0)
    reference = _randomize(hf_class(config_class(**COMMON, **kwargs, attn_implementation="eager")).eval())
    reference.save_pretrained(folder)
    return reference


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    reference = _tiny(*VARIANTS[request.param], folder)
    if request.param == "llama-mha-linear":  # the transformers v4 layout: rope_theta + rope_scaling {"type"}
        data = json.loads((folder / "config.json").read_text())
        data.pop("rope_parameters")
        data.update(rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 2.0})
        (folder / "config.json").write_text(json.dumps(data))
    return reference, folder, request.param


def _batch(length=13):
    ids = torch.randint(0, VOCAB, (3, length))
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, 9:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    return ids, mask


def test_matches_transformers_with_padding_hidden_states_and_attentions(checkpoint):
    reference, folder, name = checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(model, LlamaForCausalLM)
    ids, mask = _batch()
    with torch.no_grad():  # default positions: the padded column index, on both sides
        expected = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    got = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    real = mask.bool()
    torch.testing.assert_close(got.logits[real], expected.logits[real], atol=1e-4, rtol=0)
    assert got.logits.shape == (3, 13, VOCAB) and not got.logits[~real].any()  # zeros at padding
    assert len(got.hidden_states) == len(expected.hidden_states) == 4  # embeddings, 2 layer outputs, final norm
    for mine, theirs in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine[real], theirs[real], atol=1e-4, rtol=0)
    pair = real[:, :, None] & real[:, None, :]  # attention between real tokens only
    assert len(got.attentions) == len(expected.attentions) == 3
    for mine, theirs in zip(got.attentions, expected.attentions):
        torch.testing.assert_close(mine.permute(0, 2, 3, 1)[pair], theirs.permute(0, 2, 3, 1)[pair], atol=1e-5, rtol=0)


def test_left_padding_with_generation_position_ids(checkpoint):
    reference, folder, _ = checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids, mask = _batch()
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # counted from each row's first real token, as generate does
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    got = model(ids, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=0)


def test_base_model_matches_transformers(tmp_path):
    reference = _tiny(*VARIANTS["llama-mha-tied"], tmp_path)  # AutoModel skips the head's weights
    model = AutoModel.from_pretrained(tmp_path)
    assert isinstance(model, LlamaModel) and (model.num_layers, model.num_kv_heads, model.head_dim) == (3, 5, 16)
    ids, mask = _batch()
    with torch.no_grad():
        expected = reference.model(input_ids=ids, attention_mask=mask).last_hidden_state
    got = model(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=0)


# -- paged KV cache: chunked prefill then decode, against a cache-free recomputation ----------------
BLOCK = 16


def _cumulative(lengths):  # (B,) -> (B + 1,) int32 starting at 0
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def _step_meta(starts, counts, block_tables, decode):
    """Metadata of one engine step: sequence b adds counts[b] tokens after starts[b] cached ones."""
    positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, counts)])
    context = [s + n for s, n in zip(starts, counts)]
    seq = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    slots = block_tables[seq, positions // BLOCK].long() * BLOCK + positions % BLOCK
    return AttentionMetadata(
        positions=positions,
        cu_seqlens_q=_cumulative(counts),
        cu_seqlens_k=_cumulative(context),
        max_seqlen_q=max(counts),
        max_seqlen_k=max(context),
        slot_mapping=slots,
        block_tables=block_tables,
        context_lens=torch.tensor(context, dtype=torch.int32),
        is_decode=decode,
    )


def _check_cached_generation(model, prompts, chunk, steps, full_logits=None):
    """Prefill `prompts` in two chunks (the second attends to the first through the block tables),
    then `steps` greedy decode steps. Every step's logits must equal a full recomputation without
    cache: being causal, one cache-free forward of each final sequence gives every step's rows."""
    device = model.device
    full_logits = full_logits or (lambda seq: model(torch.tensor([seq], device=device)).logits[0].cpu())  # (len, V)
    caches = [
        (
            torch.zeros(8, BLOCK, model.num_kv_heads, model.head_dim, dtype=model.dtype, device=device),
            torch.zeros(8, BLOCK, model.num_kv_heads, model.head_dim, dtype=model.dtype, device=device),
        )
        for _ in range(model.num_layers)
    ]
    block_tables = torch.randperm(8)[: 2 * len(prompts)].view(len(prompts), 2).to(torch.int32)  # shuffled ids
    seqs = [list(p) for p in prompts]
    cached = [[] for _ in prompts]  # per sequence: the cached path's logits, position by position

    def run_step(starts, counts, decode):
        ids = torch.cat([torch.tensor(seqs[b][s : s + n]) for b, (s, n) in enumerate(zip(starts, counts))])
        meta = _step_meta(starts, counts, block_tables, decode)
        logits = model.compute_logits(model.forward_packed(ids.to(device), meta.to(device), caches)).cpu()  # (T, V)
        for b, rows in enumerate(logits.split(counts)):
            cached[b].append(rows)
        return logits[meta.cu_seqlens_q[1:].long() - 1]  # each sequence's last token

    firsts = [min(chunk, len(p)) for p in prompts]
    run_step([0] * len(prompts), firsts, decode=False)
    last = run_step(firsts, [len(p) - f for p, f in zip(prompts, firsts)], decode=False)
    for _ in range(steps):
        for b, token in enumerate(last.argmax(-1).tolist()):
            seqs[b].append(token)
        last = run_step([len(s) - 1 for s in seqs], [1] * len(seqs), decode=True)
    for b, seq in enumerate(seqs):  # one cached row per token of the final sequence
        torch.testing.assert_close(torch.cat(cached[b]), full_logits(seq), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama-gqa-llama3", "qwen2"])
def test_paged_kv_cache_matches_full_recomputation(name, tmp_path):
    _tiny(*VARIANTS[name], tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    # Prompts of 21 and 9 tokens in chunks (6, 6) then (15, 3): the first crosses a block
    # boundary in the second chunk; 3 decode steps follow (shuffled block ids).
    prompts = [torch.randint(0, VOCAB, (21,)).tolist(), torch.randint(0, VOCAB, (9,)).tolist()]
    _check_cached_generation(model, prompts, chunk=6, steps=3)


def test_runs_the_triton_kernels(tmp_path, monkeypatch, device):
    reference = _tiny(*VARIANTS["llama-gqa-bias"], tmp_path)  # one GQA model exercises every decoder kernel
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    model = AutoModelForCausalLM.from_pretrained(tmp_path, device=device, dtype=torch.float32)
    ids, mask = _batch(length=9)
    mask[1, 6:] = 0
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
    got = model(ids.to(device), attention_mask=mask.to(device)).logits.cpu()
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=0)
    # The paged path: rotary, cache writes, paged prefill and paged decode kernels.
    with torch.no_grad():  # against transformers directly: no second cache-free run under the interpreter
        _check_cached_generation(
            model,
            [torch.randint(0, VOCAB, (18,)).tolist()],
            chunk=7,
            steps=1,
            full_logits=lambda seq: reference(torch.tensor([seq])).logits[0],
        )


# -- sliding window (Mistral), config errors -------------------------------------------------------
def test_sliding_window_exact_within_the_window_and_refused_beyond(tmp_path):
    reference = _tiny(transformers.MistralForCausalLM, {**GQA, "sliding_window": 8}, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="sliding_window 8"):
        model(torch.randint(0, VOCAB, (1, 9)))


def _config(tmp_path, **changes):
    data = {"model_type": "llama", **COMMON, **MHA}
    data.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        data.pop(key)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def _load_config(path):
    from fastx.checkpoints.hub import read_json
    from fastx.models.config import config_from_dict

    return config_from_dict(LlamaConfig, read_json(path), str(path))


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
            r"rope_scaling/rope_type 'yarn' not supported \(supported: default, linear, llama3\)",
        ),
        ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4}}, r"rope_scaling/rope_type 'dynamic'"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, r"lacks low_freq_factor, high_freq_factor"),
        ({"rope_scaling": {"type": "linear", "factor": "2"}}, r"factor must be a positive number, got '2'"),
        ({"hidden_act": "gelu"}, r"hidden_act 'gelu' not supported \(supported: silu\)"),
        ({"hidden_size": None}, r"missing required field 'hidden_size'"),
        ({"num_key_value_heads": "5"}, r"field 'num_key_value_heads' must be"),
        ({"num_key_value_heads": 2}, r"num_attention_heads 5 is not a multiple of num_key_value_heads 2"),
    ],
)
def test_broken_configs_name_the_field(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        _load_config(_config(tmp_path, **changes))


def test_config_defaults_and_qwen2_window(tmp_path):
    config = _load_config(_config(tmp_path, eos_token_id=[2, 7]))
    assert (config.num_key_value_heads, config.head_dim, config.rotary_dim, config.eos_token_id) == (5, 16, 16, [2, 7])
    qwen = _load_config(_config(tmp_path, model_type="qwen2", sliding_window=4096, use_sliding_window=False))
    assert qwen.attention_window is None and qwen.qkv_bias and not qwen.o_bias
    mistral = _load_config(_config(tmp_path, model_type="mistral", sliding_window=4096))
    assert mistral.attention_window == 4096


# -- SmolLM2-135M-Instruct, real weights ------------------------------------------------------------
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Hello! How are you today? I am"]


def test_smollm2_logits_match_transformers(smollm2_checkpoint):
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_checkpoint)
    enc = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    reference = transformers.AutoModelForCausalLM.from_pretrained(smollm2_checkpoint).eval()
    with torch.no_grad():
        expected = reference(**enc).logits
    real = enc["attention_mask"].bool()
    model = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint, dtype="auto")
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32  # the folder's config says float32
    got = model(enc["input_ids"], enc["attention_mask"]).logits
    # Scale-aware: 30 fp32 layers and logits up to ~36; GEMMs of different shapes (packed rows
    # vs the padded batch) sum in different orders, so the rounding error grows with the
    # logits' magnitude (measured: 4.5e-5 absolute, 1.3e-6 of max|logit|).
    torch.testing.assert_close(got[real], expected[real], atol=1e-4 * expected[real].abs().max().item(), rtol=0)

    bf16 = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    logits = bf16(enc["input_ids"], enc["attention_mask"]).logits
    assert logits.dtype == torch.bfloat16
    # bf16 rounds differently from fp32 (no exact values): the next-token choices must agree.
    last = real.sum(1) - 1
    rows = torch.arange(len(PROMPTS))
    assert torch.equal(logits[rows, last].argmax(-1), expected[rows, last].argmax(-1))
    agreement = (logits[real].argmax(-1) == expected[real].argmax(-1)).float().mean()
    assert agreement >= 0.9, agreement
