"""BERT encoders (BertModel and its masked-LM, sequence- and token-classification and question-answering heads).

Legend: B = batch, L = padded length, T = real tokens (packed), E = hidden size, H = heads,
D = head dim. A padded batch is packed once at the embeddings (no compute on padding, see
packing.py); every layer works on (T, E) rows; outputs are unpacked to (B, L, E).
Parameter names follow transformers' checkpoints so weights load by name; query/key/value are
packed into one `qkv` projection at load time (one GEMM instead of three).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import fastx.ops as ops
from fastx.models.base import PreTrainedModel
from fastx.models.config import check_multiple, check_supported
from fastx.models.outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from fastx.models.packing import PackedBatch, packed_attention

GELU_APPROXIMATION = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    position_embedding_type: str = "absolute"
    num_labels: int | None = None
    id2label: dict | None = None
    problem_type: str | None = None

    def validate(self, source: str) -> None:
        check_multiple(source, self, "hidden_size", "num_attention_heads")
        check_supported(source, self, "hidden_act", GELU_APPROXIMATION)
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"{source}: position_embedding_type {self.position_embedding_type!r} not supported (only 'absolute')"
            )

    @property
    def labels(self) -> int:
        if self.num_labels is not None:
            return self.num_labels
        return len(self.id2label) if self.id2label else 2


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, token_type_ids, positions):  # all (T,) -> (T, E)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        return ops.layer_norm(x, x.shape[-1:], self.LayerNorm.weight, self.LayerNorm.bias, self.LayerNorm.eps)


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)  # query, key, value packed

    def forward(self, x, batch: PackedBatch, output_attentions: bool):  # (T, E)
        q, k, v = self.qkv(x).view(x.shape[0], 3, self.num_heads, self.head_dim).unbind(1)  # 3 x (T, H, D)
        out, probs = packed_attention(q, k, v, batch, causal=False, output_attentions=output_attentions)
        return out.reshape(x.shape), probs


class BertOutput(nn.Module):
    """dense -> (+ residual) -> LayerNorm; after attention (in = E) and after the MLP (in = intermediate)."""

    def __init__(self, config: BertConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, residual):  # post-norm: LayerNorm(dense(x) + residual), add fused into the norm
        normed, _ = ops.add_layer_norm(
            self.dense(x), residual, residual.shape[-1:], self.LayerNorm.weight, self.LayerNorm.bias, self.LayerNorm.eps
        )
        return normed


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)  # transformers' name: attention.self.*
        self.output = BertOutput(config, config.hidden_size)

    def forward(self, x, batch, output_attentions):
        attended, probs = self.self(x, batch, output_attentions)
        return self.output(attended, x), probs


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.approximate = GELU_APPROXIMATION[config.hidden_act]

    def forward(self, x):
        # GELU with the bias add fused into it: the GEMM runs without its bias.
        return ops.bias_gelu(nn.functional.linear(x, self.dense.weight), self.dense.bias, self.approximate)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config, config.intermediate_size)

    def forward(self, x, batch, output_attentions):
        attended, probs = self.attention(x, batch, output_attentions)
        return self.output(self.intermediate(attended), attended), probs


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):  # (B, L, E) -> (B, E): the first ([CLS]) token
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(PreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"
    optional_modules = ("pooler",)
    packed_modules = {"qkv": ("query", "key", "value")}

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor | None = None,  # (B, L), 1 = real token
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_dict: bool = True,
    ) -> BaseModelOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape (batch, length), got {tuple(input_ids.shape)}")
        batch, length = input_ids.shape
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"input_ids: length {length} exceeds max_position_embeddings {self.config.max_position_embeddings}"
            )
        if position_ids is None:
            position_ids = self.default_position_ids(input_ids)
        packed = PackedBatch.from_mask(attention_mask, batch, length, input_ids.device)
        ids = packed.pack(input_ids)
        types = packed.pack(token_type_ids) if token_type_ids is not None else torch.zeros_like(ids)
        # transformers' default positions are the column indices of the padded batch (so a
        # left-padded row starts past 0); matching them keeps outputs identical.
        positions = (
            packed.pack(position_ids.expand(batch, length)) if position_ids is not None else packed.indices % length
        )

        x = self.embeddings(ids, types, positions)  # (T, E)
        hidden_states, attentions = [x], []
        for layer in self.encoder.layer:
            x, probs = layer(x, packed, output_attentions)
            hidden_states.append(x)
            attentions.append(probs)
        last = packed.unpack(x)
        pooled = self.pooler(last) if self.pooler is not None else None
        return BaseModelOutput(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=tuple(packed.unpack(h) for h in hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )

    def default_position_ids(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """Hook: (B, L) positions when the caller gives none; None = the padded batch's column indices."""
        return None


class _BertTaskModel(PreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"
    optional_modules = ("pooler",)
    packed_modules = BertModel.packed_modules

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor | None = None,  # (B, L), 1 = real token
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_dict: bool = True,
    ):
        base = getattr(self, self.base_model_prefix)  # self.bert, self.roberta, ...
        out = base(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, output_attentions)
        return self.head(out)

    def head(self, out: BaseModelOutput):
        """The task head on the encoder's output -> the task's output dataclass."""
        raise NotImplementedError


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.approximate = GELU_APPROXIMATION[config.hidden_act]

    def forward(self, x):
        x = ops.bias_gelu(nn.functional.linear(x, self.dense.weight), self.dense.bias, self.approximate)
        return ops.layer_norm(x, x.shape[-1:], self.LayerNorm.weight, self.LayerNorm.bias, self.LayerNorm.eps)


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x):
        return nn.functional.linear(self.transform(x), self.decoder.weight, self.bias)


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)


# Heads built without a pooler still load checkpoints that carry one (bert-base-uncased does).
_NO_POOLER = (r"^(bert\.)?pooler\.",)


class BertForMaskedLM(_BertTaskModel):
    # the decoder bias duplicates cls.predictions.bias; seq_relationship is the pretraining NSP head
    ignored_checkpoint_keys = (
        PreTrainedModel.ignored_checkpoint_keys
        + _NO_POOLER
        + (r"^cls\.predictions\.decoder\.bias$", r"^cls\.seq_relationship\.")
    )

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)

    def tie_weights(self):  # BERT's decoder always shares the word embeddings
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def head(self, out: BaseModelOutput):
        logits = self.cls.predictions(out.last_hidden_state)
        return MaskedLMOutput(logits, out.hidden_states, out.attentions)


class BertForSequenceClassification(_BertTaskModel):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.labels)

    def head(self, out: BaseModelOutput):
        if out.pooler_output is None:
            raise ValueError("BertForSequenceClassification: the checkpoint has no pooler weights")
        return SequenceClassifierOutput(self.classifier(out.pooler_output), out.hidden_states, out.attentions)


class BertForTokenClassification(_BertTaskModel):
    ignored_checkpoint_keys = PreTrainedModel.ignored_checkpoint_keys + _NO_POOLER

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.labels)

    def head(self, out: BaseModelOutput):
        return TokenClassifierOutput(self.classifier(out.last_hidden_state), out.hidden_states, out.attentions)


def span_logits(qa_outputs: nn.Linear, out: BaseModelOutput) -> QuestionAnsweringModelOutput:
    """The extractive-QA head shared by the BERT family: per token a start and an end logit."""
    start, end = qa_outputs(out.last_hidden_state).split(1, dim=-1)  # 2 x (B, L, 1)
    return QuestionAnsweringModelOutput(start.squeeze(-1), end.squeeze(-1), out.hidden_states, out.attentions)


class BertForQuestionAnswering(_BertTaskModel):
    ignored_checkpoint_keys = PreTrainedModel.ignored_checkpoint_keys + _NO_POOLER

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.labels)

    def head(self, out: BaseModelOutput):
        return span_logits(self.qa_outputs, out)
