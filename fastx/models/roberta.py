"""RoBERTa encoders (RobertaModel and its masked-LM, sequence- and token-classification and QA heads).

Legend: B = batch, L = padded length, E = hidden size, V = vocabulary, C = labels.
RoBERTa is BERT's architecture with other default position ids and other heads, so the
embeddings, layers, pooler and the packed forward pass are BERT's (fastx.models.bert); this
file holds only what differs: the position ids, the LM head and the classification head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import fastx.ops as ops
from fastx.models.base import PreTrainedModel
from fastx.models.bert import (
    BertConfig,
    BertForQuestionAnswering,
    BertForTokenClassification,
    BertModel,
    _BertTaskModel,
)
from fastx.models.outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput


@dataclass
class RobertaConfig(BertConfig):
    pad_token_id: int = 1  # required (positions are counted from it), so not None as in BERT


def create_position_ids_from_input_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """(B, L) -> (B, L): padding_idx + 1 + the count of non-pad tokens so far; pad tokens get padding_idx.

    As fairseq and transformers: counted from `input_ids != padding_idx` (not the attention mask),
    so a left-padded row still starts at padding_idx + 1.
    """
    mask = input_ids.ne(padding_idx).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + padding_idx


class RobertaModel(BertModel):
    config_class = RobertaConfig
    base_model_prefix = "roberta"

    def default_position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """RoBERTa counts positions from pad_token_id + 1, over the real tokens of each row."""
        position_ids = create_position_ids_from_input_ids(input_ids, self.config.pad_token_id)
        # Positions run past L (they start at pad_token_id + 1): check the largest, not L.
        largest = int(position_ids.max()) if input_ids.numel() else 0
        if largest >= self.config.max_position_embeddings:
            raise ValueError(
                f"input_ids: position ids reach {largest} (pad_token_id + real tokens in a row), "
                f"beyond max_position_embeddings {self.config.max_position_embeddings}"
            )
        return position_ids


class _RobertaTaskModel(_BertTaskModel):
    config_class = RobertaConfig
    base_model_prefix = "roberta"


class RobertaLMHead(nn.Module):
    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # weight tied to the embeddings
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x):  # (B, L, E) -> (B, L, V)
        # transformers' RobertaLMHead calls the exact (erf) GELU whatever hidden_act says.
        x = ops.bias_gelu(nn.functional.linear(x, self.dense.weight), self.dense.bias, "none")
        x = ops.layer_norm(x, x.shape[-1:], self.layer_norm.weight, self.layer_norm.bias, self.layer_norm.eps)
        return nn.functional.linear(x, self.decoder.weight, self.bias)


class RobertaForMaskedLM(_RobertaTaskModel):
    # The decoder's bias is lm_head.bias (transformers ties the two); older checkpoints store both.
    ignored_checkpoint_keys = PreTrainedModel.ignored_checkpoint_keys + (r"^lm_head\.decoder\.bias$",)

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(config)

    def tie_weights(self):  # the decoder always shares the word embeddings, as in BERT
        self.lm_head.decoder.weight = self.roberta.embeddings.word_embeddings.weight

    def head(self, out: BaseModelOutput):
        return MaskedLMOutput(self.lm_head(out.last_hidden_state), out.hidden_states, out.attentions)


class RobertaClassificationHead(nn.Module):
    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.labels)

    def forward(self, hidden):  # (B, L, E) -> (B, C): the first (<s>) token, no pooler
        return self.out_proj(torch.tanh(self.dense(hidden[:, 0])))


class RobertaForSequenceClassification(_RobertaTaskModel):
    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.classifier = RobertaClassificationHead(config)

    def head(self, out: BaseModelOutput):
        return SequenceClassifierOutput(self.classifier(out.last_hidden_state), out.hidden_states, out.attentions)


class RobertaForTokenClassification(_RobertaTaskModel, BertForTokenClassification):
    """BERT's token classifier (its forward) over a RobertaModel."""

    def __init__(self, config: RobertaConfig):
        PreTrainedModel.__init__(self)  # not BertForTokenClassification's: that one builds a BertModel
        self.config = config
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.labels)


class RobertaForQuestionAnswering(_RobertaTaskModel, BertForQuestionAnswering):
    """BERT's span head (its forward) over a RobertaModel."""

    # SQuAD fine-tunes of roberta-base may still carry the base model's unused pooler
    ignored_checkpoint_keys = PreTrainedModel.ignored_checkpoint_keys + (r"^(roberta\.)?pooler\.",)

    def __init__(self, config: RobertaConfig):
        PreTrainedModel.__init__(self)  # not BertForQuestionAnswering's: that one builds a BertModel
        self.config = config
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.labels)
