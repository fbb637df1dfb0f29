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


def _seq(tokens, prompt_len=None, **params):
    seed = params.pop("gen_seed", None)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    s = Sequence(0, 0, tokens[: prompt_len or len(tokens)], SamplingParams(**params), 0, generator)
    s.token_ids = list(tokens)
    return s


def test_greedy_penalties_and_min_tokens():
    logits = torch.tensor([[1.0, 3.0, 2.9, 0.0], [5.0, 1.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    # row 0: token 1 was already generated; a presence penalty of 0.5 hands the argmax to token 2
    rows = [_seq([3, 1], prompt_len=1, temperature=0, presence_penalty=0.5), _seq([3], temperature=0, min_tokens=1)]
    result = sample(logits, rows, eos_token_ids={0}, generator=g)
    assert result.token_ids == [2, 1]  # row 1: EOS (0) masked until min_tokens


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -1.0, 1.5]])
    row = _seq([0, 1], temperature=0, repetition_penalty=2.0)
    assert sample(logits, [row], set(), torch.Generator()).token_ids == [2]


def test_top_k_one_and_tiny_top_p_are_greedy_even_when_sampling():
    logits = torch.randn(4, 50)
    g = torch.Generator().manual_seed(1)
    rows = [
        _seq([1], temperature=1.0, top_k=1),
        _seq([1], temperature=1.0, top_p=1e-6),
        _seq([1], temperature=0.7, min_p=1.0),
        _seq([1], temperature=0),
    ]
    assert sample(logits, rows, set(), g).token_ids == logits.argmax(-1).tolist()


def test_seeded_rows_do_not_depend_on_the_batch():
    logits = torch.randn(3, 100)
    alone = sample(logits[1:2], [_seq([1], gen_seed=7)], set(), torch.Generator().manual_seed(0)).token_ids
    batched = sample(logits, [_seq([1]), _seq([1], gen_seed=7), _seq([1])], set(), torch.Generator().manual_seed(5))
    assert batched.token_ids[1] == alone[0]


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = probs.log().expand(4000, 3)
    rows = [_seq([0]) for _ in range(4000)]
    tokens = torch.tensor(sample(logits, rows, set(), torch.Generator().manual_seed(0)).token_ids)
    freq = torch.bincount(tokens, minlength=3).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03), freq


def test_logprobs_are_the_raw_distributions_top_k_plus_the_chosen_token():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]])
    result = sample(logits, [_seq([0], temperature=0, logprobs=2)], set(), torch.Generator())
    expected = torch.log_softmax(logits[0], -1)
    assert set(result.logprobs[0]) == {1, 2}
    assert result.logprobs[0][1] == pytest.approx(expected[1].item())
