"""SamplingParams validation and the sampler's processing order, seeds and logprobs."""

import math

import pytest
import torch

from fastx.engine.sampler import sample
from fastx.engine.sampling_params import SamplingParams
from fastx.engine.sequence import Sequence


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n": 0}, "n"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": 5, "max_tokens": 3}, "min_tokens"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"logprobs": -1}, "logprobs"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_invalid_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SamplingParams\.{field}: expected"):
        SamplingParams(**kwargs)


def test_tiny_temperature_is_greedy_and_stop_string_becomes_a_list():
    p = SamplingParams(temperature=1e-7, stop="###")
    assert p.greedy and p.stop_strings == ["###"]


def _seq(tokens, prompt_len=None, sample_seed=0, **params):
    s = Sequence(0, 0, tokens[: prompt_len or len(tokens)], SamplingParams(**params), 0, sample_seed)
    s.token_ids = list(tokens)
    return s


def test_greedy_penalties_and_min_tokens():
    logits = torch.tensor([[1.0, 3.0, 2.9, 0.0], [5.0, 1.0, 0.0, 0.0]])
    # row 0: token 1 was already generated; a presence penalty of 0.5 hands the argmax to token 2
    rows = [_seq([3, 1], prompt_len=1, temperature=0, presence_penalty=0.5), _seq([3], temperature=0, min_tokens=1)]
    result = sample(logits, rows, eos_token_ids={0})
    assert result.token_ids == [2, 1]  # row 1: EOS (0) masked until min_tokens


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -1.0, 1.5]])
    row = _seq([0, 1], temperature=0, repetition_penalty=2.0)
    assert sample(logits, [row], set()).token_ids == [2]


def test_top_k_one_and_tiny_top_p_are_greedy_even_when_sampling():
    logits = torch.randn(4, 50)
    rows = [
        _seq([1], temperature=1.0, top_k=1),
        _seq([1], temperature=1.0, top_p=1e-6),
        _seq([1], temperature=0.7, min_p=1.0),
        _seq([1], temperature=0),
    ]
    assert sample(logits, rows, set()).token_ids == logits.argmax(-1).tolist()


def test_seeded_rows_do_not_depend_on_the_batch():
    logits = torch.randn(3, 100)
    alone = sample(logits[1:2], [_seq([1], sample_seed=7)], set()).token_ids
    batched = sample(logits, [_seq([1], sample_seed=3), _seq([1], sample_seed=7), _seq([1], sample_seed=5)], set())
    assert batched.token_ids[1] == alone[0]


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = probs.log().expand(4000, 3)
    rows = [_seq([0], sample_seed=seed) for seed in range(4000)]
    tokens = torch.tensor(sample(logits, rows, set()).token_ids)
    freq = torch.bincount(tokens, minlength=3).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03), freq


def test_logprobs_are_the_raw_distributions_top_k_plus_the_chosen_token():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]])
    result = sample(logits, [_seq([0], temperature=0, logprobs=2)], set())
    expected = torch.log_softmax(logits[0], -1)
    assert set(result.logprobs[0]) == {1, 2}
    assert result.logprobs[0][1] == pytest.approx(expected[1].item())


def _reference_penalties(logits, seqs, eos_token_ids):
    """The per-row loop the vectorised sampler replaced: vLLM's penalties and min_tokens, row by row."""
    logits = logits.clone()
    vocab = logits.shape[1]
    for row, seq in enumerate(seqs):
        p = seq.params
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted({t for t in seq.token_ids if t < vocab}), dtype=torch.long)
            values = logits[row, seen]
            logits[row, seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        out = [t for t in seq.output_token_ids if t < vocab]
        if out and (p.presence_penalty or p.frequency_penalty):
            ids, counts = torch.tensor(out).unique(return_counts=True)
            logits[row, ids] -= p.frequency_penalty * counts.float() + p.presence_penalty
        if seq.num_output_tokens < p.min_tokens:
            banned = [t for t in set(p.stop_token_ids) | (set() if p.ignore_eos else eos_token_ids) if t < vocab]
            logits[row, banned] = float("-inf")
    return logits


def test_vectorised_penalties_match_the_per_row_reference():
    torch.manual_seed(0)
    vocab = 40
    seqs = [
        _seq([1, 2, 2, 3, 2], prompt_len=2, temperature=0, repetition_penalty=1.3, frequency_penalty=0.4),
        _seq([5, 6], prompt_len=1, temperature=0, presence_penalty=-0.7, min_tokens=3, stop_token_ids=[7, 99]),
        _seq([9], temperature=0),
        _seq(
            [45, 3, 3],
            prompt_len=1,
            temperature=0,
            repetition_penalty=0.8,
            presence_penalty=1.0,
            ignore_eos=True,
            min_tokens=4,
        ),  # 45: an id past the model's vocabulary (a larger tokenizer)
    ]
    logits = torch.randn(len(seqs), vocab) * 3
    from fastx.engine.sampler import _mask_until_min_tokens, _penalise

    got = _mask_until_min_tokens(_penalise(logits.clone(), seqs), seqs, {0})
    torch.testing.assert_close(got, _reference_penalties(logits, seqs, {0}), rtol=1e-6, atol=1e-6)
    assert sample(logits, seqs, {0}).token_ids == _reference_penalties(logits, seqs, {0}).argmax(-1).tolist()


def test_one_sequences_successive_draws_follow_the_distribution():
    """Draws keyed by (seed, step) are independent across steps, not only across seeds."""
    from fastx.engine.sampler import exponential_noise, row_key

    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    keys = torch.tensor([row_key(1234, step) for step in range(6000)])
    tokens = (probs / exponential_noise(keys, 4)).argmax(-1)
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(freq, probs, atol=0.02), freq
    noise = exponential_noise(keys[:200], 1000)
    assert abs(noise.mean().item() - 1.0) < 0.01 and abs(noise.var().item() - 1.0) < 0.03
    assert (noise > 0).all() and torch.isfinite(noise).all()


def test_logprobs_of_mixed_rows_in_one_batch():
    logits = torch.randn(3, 30)
    rows = [_seq([0], temperature=0, logprobs=3), _seq([0], temperature=0), _seq([0], temperature=0, logprobs=0)]
    result = sample(logits, rows, set())
    expected = torch.log_softmax(logits, -1)
    chosen = logits.argmax(-1).tolist()
    assert result.token_ids == chosen and result.logprobs[1] is None
    assert set(result.logprobs[0]) == {chosen[0], *expected[0].topk(3).indices.tolist()}
    assert result.logprobs[2] == {chosen[2]: pytest.approx(expected[2, chosen[2]].item())}
