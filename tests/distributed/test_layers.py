"""Which rows and columns each rank keeps: the per-component Megatron split, checked without processes.

The layers' forward passes (the collectives) are exercised end to end with two gloo processes in
test_launch.py; here each rank's slice of a full checkpoint tensor is checked against the layout
one device holds, for every rank of a group.
"""

import pytest
import torch
from torch import nn

import fastx.distributed.layers as tp
from fastx.ops.linear import Linear


def _build(size, rank, make):
    with tp.building(tp.Shard(rank, size)):
        return make()


@pytest.mark.parametrize(
    ("heads", "kv_heads", "size"),
    [(4, 2, 2), (6, 3, 3), (4, 1, 2), (8, 2, 4), (6, 2, 6)],
    ids=["gqa-split", "odd-heads", "kv-replicated", "kv-split-4", "kv-shared-by-3"],
)
def test_fused_qkv_rows_are_each_ranks_q_then_k_then_v_heads(heads, kv_heads, size):
    head_dim, hidden = 3, 5
    full = torch.randn((heads + 2 * kv_heads) * head_dim, hidden)
    q, k, v = full.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim])
    q_heads, k_heads, v_heads = (t.view(-1, head_dim, hidden) for t in (q, k, v))
    local_q, local_kv = heads // size, max(1, kv_heads // size)
    for rank in range(size):
        layer = _build(size, rank, lambda: tp.qkv_linear(hidden, head_dim, heads, kv_heads, bias=True))
        assert isinstance(layer, tp.ColumnParallelLinear)
        assert layer.out_features == (local_q + 2 * local_kv) * head_dim
        # checkpoint pieces (Llama: q_proj, k_proj, v_proj) and one fused tensor (GPT-2's c_attn) agree
        pieces = torch.cat([layer.shard_tensor("weight", t, part) for part, t in enumerate((q, k, v))])
        torch.testing.assert_close(layer.shard_tensor("weight", full, None), pieces, rtol=0, atol=0)
        got_q, got_k, got_v = pieces.split([local_q * head_dim, local_kv * head_dim, local_kv * head_dim])
        torch.testing.assert_close(got_q.view(-1, head_dim, hidden), q_heads[rank * local_q : (rank + 1) * local_q])
        # the query heads of this rank attend to these K/V heads (GQA groups stay whole on one rank)
        group = heads // kv_heads
        want_kv = sorted({h // group for h in range(rank * local_q, (rank + 1) * local_q)})
        assert len(want_kv) == local_kv
        torch.testing.assert_close(got_k.view(-1, head_dim, hidden), k_heads[want_kv])
        torch.testing.assert_close(got_v.view(-1, head_dim, hidden), v_heads[want_kv])
        bias = torch.arange(full.shape[0], dtype=torch.float32)
        assert layer.shard_tensor("bias", bias, None).shape == (layer.out_features,)


def test_gate_up_split_per_component_and_row_parallel_columns():
    hidden, width, size = 4, 6, 2
    gate, up, down = torch.randn(width, hidden), torch.randn(width, hidden), torch.randn(hidden, width)
    rebuilt_gate, rebuilt_up, rebuilt_down = [], [], []
    for rank in range(size):
        gate_up = _build(size, rank, lambda: tp.column_linear(hidden, (width, width), bias=False))
        row = _build(size, rank, lambda: tp.row_linear(width, hidden, bias=True))
        local = torch.cat([gate_up.shard_tensor("weight", gate, 0), gate_up.shard_tensor("weight", up, 1)])
        assert local.shape == (width, hidden)  # silu(gate) * up stays a local op: both halves of a column
        rebuilt_gate.append(local[: width // size])
        rebuilt_up.append(local[width // size :])
        rebuilt_down.append(row.shard_tensor("weight", down, None))
        assert row.in_features == width // size
        bias = torch.randn(hidden)
        assert row.shard_tensor("bias", bias, None) is bias  # replicated, added once after the all-reduce
    torch.testing.assert_close(torch.cat(rebuilt_gate), gate)
    torch.testing.assert_close(torch.cat(rebuilt_up), up)
    torch.testing.assert_close(torch.cat(rebuilt_down, dim=1), down)


@pytest.mark.parametrize(("vocab", "size"), [(99, 2), (97, 4), (8, 2)])
def test_vocab_rows_padded_to_equal_shares(vocab, size):
    table = torch.randn(vocab, 3)
    shares = []
    for rank in range(size):
        embed = _build(size, rank, lambda: tp.vocab_embedding(vocab, 3))
        head = _build(size, rank, lambda: tp.lm_head(3, vocab))
        local = embed.shard_tensor("weight", table, None)
        torch.testing.assert_close(head.shard_tensor("weight", table, None), local)
        assert local.shape == (-(-vocab // size), 3) == tuple(head.weight.shape)
        shares.append(local)
    stacked = torch.cat(shares)
    torch.testing.assert_close(stacked[:vocab], table)
    assert not stacked[vocab:].any()  # the padding rows give logits that are cut off, embeddings never looked up


def test_shards_are_copies_not_views_of_the_checkpoint():
    """A rank's parameter must not keep the (memory-mapped) full tensor alive."""
    full = torch.randn(8, 4)
    layer = _build(2, 1, lambda: tp.column_linear(4, (8,), bias=False))
    local = layer.shard_tensor("weight", full, None)
    assert local.untyped_storage().data_ptr() != full.untyped_storage().data_ptr()
    assert local.untyped_storage().nbytes() == local.numel() * local.element_size()


def test_one_device_builds_the_plain_layers():
    assert tp.current_shard() == tp.Shard()
    assert type(tp.qkv_linear(8, 2, 2, 1, bias=False)) is Linear
    assert type(tp.row_linear(8, 8, bias=False)) is Linear
    assert type(tp.vocab_embedding(10, 8)) is nn.Embedding
    assert type(tp.lm_head(8, 10)) is Linear
    with tp.building(tp.Shard(1, 2)):
        assert tp.current_shard().rank == 1
    assert tp.current_shard().size == 1  # the build's shard ends with its block
