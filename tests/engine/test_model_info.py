"""What the engine reads off a model (eos ids, maximum length) and how its config is validated."""

import json
import types

import pytest

from fastx.engine.config import EngineConfig, check_positive_int
from fastx.engine.model_info import eos_token_ids, max_model_len, token_id_set


def _model(folder=None, eos=None):
    return types.SimpleNamespace(config=types.SimpleNamespace(eos_token_id=eos), name_or_path=folder)


def test_eos_ids_merge_the_config_the_generation_config_and_the_tokenizer(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    tokenizer = types.SimpleNamespace(eos_token_id=9)
    assert eos_token_ids(_model(str(tmp_path), eos=2), tokenizer) == {2, 7, 9}
    assert eos_token_ids(_model(tmp_path, eos=[3, 4])) == {3, 4, 2, 7}  # a PathLike folder too


def test_eos_ids_without_a_folder_or_generation_config(tmp_path):
    assert eos_token_ids(_model(str(tmp_path), eos=5)) == {5}  # no generation_config.json
    assert eos_token_ids(_model("org/repo-id", eos=None)) == set()  # not a folder: nothing read
    assert eos_token_ids(_model(None, eos=5), types.SimpleNamespace(eos_token_id=None)) == {5}
    assert token_id_set(None) == set() and token_id_set(3) == {3} and token_id_set([1, None, 2]) == {1, 2}


def test_max_model_len_reads_either_config_style_and_names_the_class_otherwise():
    assert max_model_len(types.SimpleNamespace(max_position_embeddings=2048)) == 2048
    assert max_model_len(types.SimpleNamespace(n_positions=1024)) == 1024

    class OddConfig:
        pass

    with pytest.raises(ValueError, match="OddConfig: no max_position_embeddings / n_positions"):
        max_model_len(OddConfig())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"block_size": 0}, "block_size: expected a positive integer, got 0"),
        ({"max_num_seqs": True}, "max_num_seqs: expected a positive integer, got True"),
        ({"max_num_batched_tokens": 1.5}, "max_num_batched_tokens: expected a positive integer, got 1.5"),
        ({"num_kv_blocks": 0}, "num_kv_blocks: expected a positive integer or None, got 0"),
        ({"kv_cache_memory": -1}, "kv_cache_memory: expected a positive number of bytes or None, got -1"),
    ],
)
def test_engine_config_is_validated_once_with_the_field_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        EngineConfig(**kwargs)


def test_engine_config_is_keyword_only():
    with pytest.raises(TypeError):
        EngineConfig(16)  # seven knobs, mostly ints: a positional call could swap two
    assert EngineConfig(block_size=8, num_kv_blocks=None).block_size == 8
    check_positive_int("x", None, optional=True)
    with pytest.raises(ValueError, match="x: expected a positive integer, got None"):
        check_positive_int("x", None)
