"""GPT-2 against transformers (tiny random checkpoints), and paged-KV-cache decoding against recomputation."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from fastx.models import AutoModel, AutoModelForCausalLM
from fastx.models.attention import AttentionMetadata
from fastx.models.gpt2 import GPT2LMHeadModel

# Odd sizes (NUMERICS.md): n_embd 80 over 5 heads (head dim 16), 3 layers, n_inner 200, vocab 101.
TINY = dict(vocab_size=101, n_positions=64, n_embd=80, n_layer=3, n_head=5, n_inner=200)
VARIANTS = [(act, tied) for act in ("gelu_new", "gelu") for tied in (True, False)]
BLOCK = 16  # tokens per cache block


def _save(folder, **overrides):
    torch.manual_seed(0)
    config = transformers.GPT2Config(**{**TINY, **overrides}, attn_implementation="eager")
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.save_pretrained(folder)
    return reference


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"{a}-{'tied' if t else 'untied'}" for a, t in VARIANTS])
def checkpoint(request, tmp_path_factory):
    act, tied = request.param
    folder = tmp_path_factory.mktemp(f"gpt2-{act}-{tied}")
    return _save(folder, activation_function=act, tie_word_embeddings=tied), folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2-tiny")
    return _save(folder), folder


def _batch(side):
    ids = torch.randint(0, 101, (3, 13), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 13, dtype=torch.long)
    if side == "right":
        mask[1, 9:] = 0
        mask[2, 4:] = 0
    else:
        mask[1, :4] = 0
        mask[2, :9] = 0
    # Positions counted from each row's first real token (what generation passes); both models get them.
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, positions


@pytest.mark.parametrize("side", ["right", "left"])
def test_lm_matches_transformers_with_padding_hidden_states_and_attentions(checkpoint, side):
    reference, folder = checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(model, GPT2LMHeadModel)
    assert (model.lm_head.weight is model.transformer.wte.weight) == reference.config.tie_word_embeddings
    ids, mask, positions = _batch(side)
    with torch.no_grad():
        expected = reference(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            output_hidden_states=True,
            output_attentions=True,
        )
    got = model(ids, attention_mask=mask, position_ids=positions, output_hidden_states=True, output_attentions=True)
    real = mask.bool()
    torch.testing.assert_close(got.logits[real], expected.logits[real], atol=1e-4, rtol=0)
    assert (got.logits[~real] == 0).all()
    assert len(got.hidden_states) == len(expected.hidden_states) == 4
    for mine, theirs in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine[real], theirs[real], atol=1e-4, rtol=0)
    pair = real[:, :, None] & real[:, None, :]  # attention between real tokens only
    assert len(got.attentions) == len(expected.attentions) == 3
    for mine, theirs in zip(got.attentions, expected.attentions):
        torch.testing.assert_close(mine.permute(0, 2, 3, 1)[pair], theirs.permute(0, 2, 3, 1)[pair], atol=1e-5, rtol=0)


def test_base_model_default_positions_are_padded_columns(tiny):
    reference, folder = tiny
    model = AutoModel.from_pretrained(folder)  # the LM checkpoint under the base class: lm_head is skipped
    ids, mask, _ = _batch("left")
    with torch.no_grad():  # no position_ids: transformers counts columns of the padded batch, fastx too
        expected = reference.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
    got = model(ids, attention_mask=mask)
    assert model.num_layers == 3 and model.num_kv_heads == 5 and model.head_dim == 16
    torch.testing.assert_close(got.last_hidden_state[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=0)
    assert got[0] is got.last_hidden_state


def test_old_checkpoint_layout_unscaled_attention_and_pytorch_tanh(tmp_path):
    """The Hub's original "gpt2" layout: no "transformer." prefix, no lm_head, attn.bias buffers saved."""
    folder = tmp_path / "gpt2-old"
    reference = _save(folder, scale_attn_weights=False, activation_function="gelu_pytorch_tanh")
    tensors = load_file(folder / "model.safetensors")
    old = {k.removeprefix("transformer."): v for k, v in tensors.items() if k != "lm_head.weight"}
    for i in range(3):
        old[f"h.{i}.attn.bias"] = torch.ones(64, 64).tril()[None, None]  # (1, 1, n_positions, n_positions)
        old[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(old, folder / "model.safetensors", metadata={"format": "pt"})
    model = GPT2LMHeadModel.from_pretrained(folder)
    assert model.transformer.h[0].attn.scale == 1.0
    ids, mask, positions = _batch("right")
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
    got = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=0)


def _cumulative(lengths):  # (B,) -> (B + 1,) int32 cu_seqlens
    return torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)


def _metadata(new, done, tables, decode):
    """Step metadata: sequence b adds tokens done[b]:done[b] + new[b] to its cache through tables[b]."""
    ctx = [d + n for d, n in zip(done, new)]
    positions = torch.cat([torch.arange(d, c) for d, c in zip(done, ctx)])
    seq = torch.repeat_interleave(torch.arange(len(new)), torch.tensor(new))
    slots = tables[seq, positions // BLOCK].long() * BLOCK + positions % BLOCK
    return AttentionMetadata(
        positions=positions,
        cu_seqlens_q=_cumulative(new),
        cu_seqlens_k=_cumulative(ctx),  # context = cached + new tokens
        max_seqlen_q=max(new),
        max_seqlen_k=max(ctx),
        slot_mapping=slots,
        block_tables=tables,
        context_lens=torch.tensor(ctx, dtype=torch.int32) if decode else None,
        is_decode=decode,
    )


def _check_paged_decoding(model, prompts, chunk, steps):
    """Chunked prefill then greedy decode through a paged cache; every step's logits vs full recomputation."""
    cfg = model.config
    # Shuffled block ids: sequences own scattered, non-adjacent blocks.
    num_blocks = 8
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(3)).to(torch.int32)
    tables = order.view(len(prompts), -1)  # (B, max_blocks)
    caches = [
        (
            torch.zeros(num_blocks, BLOCK, cfg.n_head, cfg.head_dim, device=model.device),
            torch.zeros(num_blocks, BLOCK, cfg.n_head, cfg.head_dim, device=model.device),
        )
        for _ in range(cfg.n_layer)
    ]
    seqs = [list(p) for p in prompts]

    def step(new, done, decode):
        meta = _metadata(new, done, tables, decode).to(model.device)
        ids = torch.tensor([t for s, d, n in zip(seqs, done, new) for t in s[d : d + n]], device=model.device)
        return model.compute_logits(model.forward_packed(ids, meta, caches)), meta

    def recompute(s, rows):  # cache-free forward of the whole sequence
        return model(torch.tensor([s], device=model.device)).logits[0, rows]

    firsts = [min(chunk, len(p)) for p in prompts]
    for new, done in ((firsts, [0] * len(prompts)), ([len(p) - f for p, f in zip(prompts, firsts)], firsts)):
        logits, meta = step(new, done, decode=False)
        bounds = meta.cu_seqlens_q.tolist()
        for b, s in enumerate(seqs):
            expected = recompute(s, slice(done[b], done[b] + new[b]))
            torch.testing.assert_close(logits[bounds[b] : bounds[b + 1]], expected, atol=1e-4, rtol=0)
    next_tokens = logits[meta.cu_seqlens_q[1:].long() - 1].argmax(-1)
    for _ in range(steps):
        for s, t in zip(seqs, next_tokens.tolist()):
            s.append(t)
        logits, _ = step([1] * len(seqs), [len(s) - 1 for s in seqs], decode=True)
        for b, s in enumerate(seqs):
            torch.testing.assert_close(logits[b], recompute(s, -1), atol=1e-4, rtol=0)
        next_tokens = logits.argmax(-1)


def test_paged_kv_cache_chunked_prefill_and_decode_match_recomputation(tiny):
    _, folder = tiny
    model = AutoModelForCausalLM.from_pretrained(folder)
    g = torch.Generator().manual_seed(2)
    # 19 and 14 tokens, prefilled as 10 + rest; decoding crosses the 16-token block boundary.
    prompts = [torch.randint(0, 101, (19,), generator=g).tolist(), torch.randint(0, 101, (14,), generator=g).tolist()]
    _check_paged_decoding(model, prompts, chunk=10, steps=3)


def test_runs_the_triton_kernels(tiny, monkeypatch, device):
    reference, folder = tiny
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    model = AutoModelForCausalLM.from_pretrained(folder, device=device, dtype=torch.float32)
    ids, mask, positions = _batch("left")
    ids, mask, positions = ids[1:, 2:], mask[1:, 2:], positions[1:, 2:]  # (2, 11): small, still left-padded
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    got = model(ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)).logits.cpu()
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=0)
    # The paged path too: write_kv_cache, varlen attention over block tables, paged decode.
    g = torch.Generator().manual_seed(4)
    _check_paged_decoding(model, [torch.randint(0, 101, (18,), generator=g).tolist()], chunk=7, steps=1)


def _edit_config(folder, **changes):
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_rejects_unsupported_configs_and_bad_checkpoints(tmp_path):
    folder = tmp_path / "gpt2"
    _save(folder)
    original = (folder / "config.json").read_text()
    for changes, message in [
        ({"activation_function": "relu"}, "activation_function 'relu' not supported"),
        ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn=True is not supported"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True is not supported"),
        ({"n_head": "5"}, "field 'n_head' must be int"),
    ]:
        _edit_config(folder, **changes)
        with pytest.raises(ValueError, match=message):
            GPT2LMHeadModel.from_pretrained(folder)
        (folder / "config.json").write_text(original)
    data = json.loads(original)
    del data["n_embd"]
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="missing required field 'n_embd'"):
        GPT2LMHeadModel.from_pretrained(folder)
    (folder / "config.json").write_text(original)

    model = GPT2LMHeadModel.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"position_ids: expected positions in \[0, 64\)"):
        model(torch.zeros(1, 3, dtype=torch.long), position_ids=torch.tensor([[62, 63, 64]]))
    with pytest.raises(ValueError, match="input_ids: length 65 exceeds n_positions 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    long_meta = _metadata([1], [64], torch.zeros(1, 5, dtype=torch.int32), decode=True)  # 65 tokens of context
    with pytest.raises(ValueError, match="context of 65 tokens exceeds n_positions 64"):
        model.forward_packed(torch.zeros(1, dtype=torch.long), long_meta)
    meta = _metadata([1], [0], torch.zeros(1, 1, dtype=torch.int32), decode=False)
    with pytest.raises(ValueError, match=r"kv_caches: expected 3 \(k_cache, v_cache\) pairs, got 1"):
        model.forward_packed(torch.zeros(1, dtype=torch.long), meta, [(torch.zeros(1, 16, 5, 16),) * 2])

    tensors = load_file(folder / "model.safetensors")
    name = "transformer.h.1.mlp.c_fc.weight"
    tensors[name] = tensors[name][:, :-1].contiguous()  # Conv1D (in, out) with one output column missing
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight.*shape"):
        GPT2LMHeadModel.from_pretrained(folder)
