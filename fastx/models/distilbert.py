"""DistilBERT encoders (DistilBertModel and its masked-LM, sequence- and token-classification and QA heads).

Legend: B = batch, L = padded length, T = real tokens (packed), E = dim, F = hidden_dim,
V = vocabulary, C = labels.
DistilBERT is a post-norm BERT without token types or pooler, under other parameter names:
the attention reuses BERT's packed-QKV self-attention and the model reuses BERT's packed
forward pass (fastx.models.bert); the modules here carry DistilBERT's checkpoint names.
LayerNorm eps is fixed at 1e-12 in every DistilBERT checkpoint (it is not in config.json).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import fastx.ops as ops
from fastx.models.base import PreTrainedModel
from fastx.models.bert import GELU_APPROXIMATION, BertConfig, BertModel, BertSelfAttention, span_logits
from fastx.models.config import check_multiple, check_supported
from fastx.models.outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput, TokenClassifierOutput
from fastx.models.packing import PackedBatch

LAYER_NORM_EPS = 1e-12


@dataclass
class DistilBertConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    hidden_dim: int
    activation: str = "gelu"
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False  # the fixed table is in the checkpoint anyway: loaded like a learned one
    pad_token_id: int | None = 0
    num_labels: int | None = None
    id2label: dict | None = None
    problem_type: str | None = None

    def validate(self, source: str) -> None:
        check_multiple(source, self, "dim", "n_heads")
        check_supported(source, self, "activation", GELU_APPROXIMATION)
        if self.id2label is not None:  # JSON keys are strings; transformers turns them into ints
            try:
                self.id2label = {int(key): label for key, label in self.id2label.items()}
            except ValueError:
                raise ValueError(
                    f"{source}: field 'id2label' must map integer ids to labels, got keys {list(self.id2label)}"
                ) from None

    # transformers' attribute_map names (BertSelfAttention reads the first two)
    hidden_size = property(lambda self: self.dim)
    num_attention_heads = property(lambda self: self.n_heads)
    num_hidden_layers = property(lambda self: self.n_layers)
    labels = BertConfig.labels


def _add_layer_norm(x, residual, norm: nn.LayerNorm):  # post-norm: norm(x + residual), add fused into the norm
    normed, _ = ops.add_layer_norm(x, residual, residual.shape[-1:], norm.weight, norm.bias, norm.eps)
    return normed


class Embeddings(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.dim)
        self.LayerNorm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)

    def forward(self, input_ids, token_type_ids, positions):  # all (T,) -> (T, E); no token types in DistilBERT
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return ops.layer_norm(x, x.shape[-1:], self.LayerNorm.weight, self.LayerNorm.bias, self.LayerNorm.eps)


class MultiHeadSelfAttention(BertSelfAttention):
    """BERT's self-attention (q_lin/k_lin/v_lin packed into `qkv`) followed by out_lin."""

    def __init__(self, config: DistilBertConfig):
        super().__init__(config)
        self.out_lin = nn.Linear(config.dim, config.dim)

    def forward(self, x, batch: PackedBatch, output_attentions: bool):  # (T, E)
        attended, probs = super().forward(x, batch, output_attentions)
        return self.out_lin(attended), probs


class FFN(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.lin1 = nn.Linear(config.dim, config.hidden_dim)
        self.lin2 = nn.Linear(config.hidden_dim, config.dim)
        self.approximate = GELU_APPROXIMATION[config.activation]

    def forward(self, x):  # (T, E) -> (T, F) -> (T, E); lin1's bias add fused into the GELU
        return self.lin2(ops.bias_gelu(nn.functional.linear(x, self.lin1.weight), self.lin1.bias, self.approximate))


class TransformerBlock(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.attention = MultiHeadSelfAttention(config)
        self.sa_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.ffn = FFN(config)
        self.output_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)

    def forward(self, x, batch, output_attentions):
        attended, probs = self.attention(x, batch, output_attentions)
        x = _add_layer_norm(attended, x, self.sa_layer_norm)
        return _add_layer_norm(self.ffn(x), x, self.output_layer_norm), probs


class Transformer(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))


class DistilBertModel(PreTrainedModel):
    config_class = DistilBertConfig
    base_model_prefix = "distilbert"
    packed_modules = {"qkv": ("q_lin", "k_lin", "v_lin")}

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.transformer = Transformer(config)
        self.pooler = None  # BertModel.forward's hook: DistilBERT has none

    @property
    def encoder(self) -> Transformer:  # BertModel.forward walks self.encoder.layer
        return self.transformer

    default_position_ids = BertModel.default_position_ids  # BertModel.forward's hook: column indices

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor | None = None,  # (B, L), 1 = real token
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_dict: bool = True,
    ) -> BaseModelOutput:
        # BERT's packed pass without token types; default positions are the padded batch's
        # column indices in both (a left-padded row starts past 0, as in transformers).
        return BertModel.forward(
            self, input_ids, attention_mask, None, position_ids, output_hidden_states, output_attentions
        )


class _DistilBertTaskModel(PreTrainedModel):
    config_class = DistilBertConfig
    base_model_prefix = "distilbert"
    packed_modules = DistilBertModel.packed_modules

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor | None = None,  # (B, L), 1 = real token
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_dict: bool = True,
    ):
        out = self.distilbert(input_ids, attention_mask, position_ids, output_hidden_states, output_attentions)
        return self.head(out)

    def head(self, out: BaseModelOutput):
        """The task head on the encoder's output -> the task's output dataclass."""
        raise NotImplementedError


class DistilBertForMaskedLM(_DistilBertTaskModel):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.config = config
        self.distilbert = DistilBertModel(config)
        self.vocab_transform = nn.Linear(config.dim, config.dim)
        self.vocab_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.vocab_projector = nn.Linear(config.dim, config.vocab_size)  # weight tied to the embeddings
        self.approximate = GELU_APPROXIMATION[config.activation]

    def tie_weights(self):
        self.vocab_projector.weight = self.distilbert.embeddings.word_embeddings.weight

    def head(self, out: BaseModelOutput):
        x = out.last_hidden_state  # (B, L, E)
        x = ops.bias_gelu(
            nn.functional.linear(x, self.vocab_transform.weight), self.vocab_transform.bias, self.approximate
        )
        x = ops.layer_norm(
            x, x.shape[-1:], self.vocab_layer_norm.weight, self.vocab_layer_norm.bias, self.vocab_layer_norm.eps
        )
        return MaskedLMOutput(self.vocab_projector(x), out.hidden_states, out.attentions)  # (B, L, V)


class DistilBertForSequenceClassification(_DistilBertTaskModel):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.config = config
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.labels)

    def head(self, out: BaseModelOutput):
        pooled = torch.relu(self.pre_classifier(out.last_hidden_state[:, 0]))  # (B, E): the first ([CLS]) token
        return SequenceClassifierOutput(self.classifier(pooled), out.hidden_states, out.attentions)  # (B, C)


class DistilBertForTokenClassification(_DistilBertTaskModel):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.config = config
        self.distilbert = DistilBertModel(config)
        self.classifier = nn.Linear(config.dim, config.labels)

    def head(self, out: BaseModelOutput):
        return TokenClassifierOutput(
            self.classifier(out.last_hidden_state), out.hidden_states, out.attentions
        )  # (B, L, C)


class DistilBertForQuestionAnswering(_DistilBertTaskModel):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.config = config
        self.distilbert = DistilBertModel(config)
        self.qa_outputs = nn.Linear(config.dim, config.labels)

    def head(self, out: BaseModelOutput):
        return span_logits(self.qa_outputs, out)
