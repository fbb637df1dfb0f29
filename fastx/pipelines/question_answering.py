"""`question-answering`: extractive answers from a context, as transformers 4.57's pipeline found them.

transformers 5 dropped this pipeline; this is a port of 4.57's algorithm (fast-tokenizer path):
the question and the context are encoded as a pair, the context cut into windows of
`max_seq_len` tokens overlapping by `doc_stride`; per window, start and end logits outside the
context are masked, soft-maxed, and the best spans (start <= end < start + `max_answer_len`) are
scored by p(start) * p(end); spans are widened to whole words (`align_to_words`), equal answers
from different windows add their scores, and `handle_impossible_answer` adds the empty answer
at the lowest null score of any window.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastx.pipelines.base import Params, TextPipeline, is_stream
from fastx.pipelines.encoding import SpanEncoder


def decode_spans(start: np.ndarray, end: np.ndarray, topk: int, max_answer_len: int, undesired: np.ndarray):
    """The `topk` best (start, end) pairs with 0 <= end - start < max_answer_len, both inside the context."""
    outer = np.matmul(start[..., None], end[:, None])  # (1, L, L): p(start) * p(end)
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    flat = candidates.flatten()
    if topk == 1:
        order = [np.argmax(flat)]
    elif len(flat) < topk:
        order = np.argsort(-flat)
    else:
        best = np.argpartition(-flat, topk)[0:topk]
        order = best[np.argsort(-flat[best])]
    starts, ends = np.unravel_index(order, candidates.shape)[1:]
    allowed = np.isin(starts, undesired.nonzero()) & np.isin(ends, undesired.nonzero())
    starts, ends = starts[allowed], ends[allowed]
    return starts, ends, candidates[0, starts, ends]


def select_starts_ends(start, end, p_mask, attention_mask, min_null_score, top_k, handle_impossible, max_answer_len):
    """transformers' select_starts_ends on one window: (starts, ends, scores, the running min null score)."""
    undesired = np.abs(np.array(p_mask)[None] - 1) & attention_mask[None]  # 1 = a token an answer may use
    masked = undesired == 0.0
    start = np.where(masked, -10000.0, start[None])
    end = np.where(masked, -10000.0, end[None])
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, undesired)
    return starts, ends, scores, min_null_score


def _examples(args: tuple, kwargs: dict):
    """transformers 4.57's argument reading: a dict, a list of dicts, two strings, or question=/context=."""
    if len(args) == 1:
        inputs = args[0]
    elif len(args) == 2 and all(isinstance(a, str) for a in args):
        inputs = [{"question": args[0], "context": args[1]}]
    elif args:
        inputs = list(args)
    elif "question" in kwargs and "context" in kwargs:
        question, context = kwargs.pop("question"), kwargs.pop("context")
        if isinstance(question, list) and isinstance(context, str):
            inputs = [{"question": q, "context": context} for q in question]
        elif isinstance(question, list) and isinstance(context, list):
            if len(question) != len(context):
                raise ValueError(
                    f"question-answering: question and context: expected lists of one length, "
                    f"got {len(question)} and {len(context)}"
                )
            inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
        elif isinstance(question, str) and isinstance(context, str):
            inputs = [{"question": question, "context": context}]
        else:
            raise ValueError("question-answering: question and context: expected strings or lists of strings")
    else:
        raise ValueError("question-answering: expected {'question', 'context'} dicts or question= and context=")
    if is_stream(inputs):
        return inputs
    return [inputs] if isinstance(inputs, dict) else list(inputs)


class QuestionAnsweringPipeline(TextPipeline):
    task = "question-answering"

    def __init__(self, model, tokenizer, **kwargs):
        self.encoder = SpanEncoder(tokenizer)
        super().__init__(model, tokenizer, **kwargs)

    def _sanitize_parameters(
        self,
        top_k=None,
        doc_stride=None,
        max_answer_len=None,
        max_seq_len=None,
        max_question_len=None,  # read by transformers' slow-tokenizer path only; accepted, as there
        handle_impossible_answer=None,
        align_to_words=None,
        **kwargs,
    ) -> Params:
        super()._sanitize_parameters(**kwargs)
        pre = {k: v for k, v in (("doc_stride", doc_stride), ("max_seq_len", max_seq_len)) if v is not None}
        for name, value in pre.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{self.task}: {name}: expected an integer >= 1, got {value!r}")
        post: dict[str, Any] = {}
        for name, value in (("top_k", top_k), ("max_answer_len", max_answer_len)):
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{self.task}: {name}: expected an integer >= 1, got {value!r}")
                post[name] = value
        if handle_impossible_answer is not None:
            post["handle_impossible_answer"] = bool(handle_impossible_answer)
        if align_to_words is not None:
            post["align_to_words"] = bool(align_to_words)
        return pre, {}, post

    def __call__(self, *args, batch_size=None, **kwargs):
        examples = _examples(args, kwargs)
        if isinstance(examples, list) and len(examples) == 1:
            return super().__call__(examples[0], batch_size, **kwargs)  # one example: one result, as 4.57
        return super().__call__(examples, batch_size, **kwargs)

    def preprocess(self, item, doc_stride=None, max_seq_len=None) -> list[dict[str, Any]]:
        if not isinstance(item, dict) or "question" not in item or "context" not in item:
            raise ValueError(f"{self.task}: inputs: expected a {{'question', 'context'}} dict, got {item!r:.80}")
        for key in ("question", "context"):
            if not isinstance(item[key], str) or not item[key]:
                raise ValueError(f"{self.task}: inputs: {key!r} must be a non-empty string, got {item[key]!r:.80}")
        if max_seq_len is None:
            max_seq_len = min(self.tokenizer.model_max_length, 384)
        if doc_stride is None:
            doc_stride = min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise ValueError(f"{self.task}: doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})")
        question_first = self.tokenizer.padding_side == "right"
        first, second = (item["question"], item["context"]) if question_first else (item["context"], item["question"])
        strategy = "only_second" if question_first else "only_first"
        try:
            windows = self.encoder.encode(first, second, max_length=max_seq_len, stride=doc_stride, strategy=strategy)
        except Exception as exc:  # the Rust tokenizer's truncation errors (question too long for max_seq_len)
            raise ValueError(
                f"{self.task}: cannot cut the context into windows of {max_seq_len} tokens: {exc}"
            ) from None
        with_types = "token_type_ids" in self.tokenizer.model_input_names
        features = []
        for window in windows:
            # p_mask: 1 where an answer cannot be (the question, special tokens), 0 in the context and at [CLS]
            p_mask = [(s != 1) if question_first else 0 for s in window.sequence_ids]
            for index, token in enumerate(window.ids):
                if token == self.tokenizer.cls_token_id:
                    p_mask[index] = 0
            feature = {"input_ids": list(window.ids), "p_mask": p_mask, "encoding": window, "example": item}
            if with_types:
                feature["token_type_ids"] = list(window.type_ids)
            features.append(feature)
        return features

    def forward(self, features, **params) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = self.model(**self.collate(features))
        start, end = out.start_logits.float().cpu(), out.end_logits.float().cpu()
        return [(start[row, : len(f["input_ids"])], end[row, : len(f["input_ids"])]) for row, f in enumerate(features)]

    def postprocess(
        self, features, outputs, top_k=1, handle_impossible_answer=False, max_answer_len=15, align_to_words=True
    ):
        min_null_score = 1000000  # large and positive
        answers: list[dict] = []
        context = features[0]["example"]["context"]
        sequence_index = 1 if self.tokenizer.padding_side == "right" else 0
        for feature, (start, end) in zip(features, outputs):
            attention = np.ones(len(feature["input_ids"]), dtype=np.int64)
            starts, ends, scores, min_null_score = select_starts_ends(
                start.numpy(),
                end.numpy(),
                feature["p_mask"],
                attention,
                min_null_score,
                top_k * 2 + 10 if align_to_words else top_k,  # aligning to words may merge candidates
                handle_impossible_answer,
                max_answer_len,
            )
            for s, e, score in zip(starts, ends, scores):
                begin, finish = _char_span(feature["encoding"], int(s), int(e), sequence_index, align_to_words)
                text = context[begin:finish]
                same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
                if same is not None:
                    same["score"] += score.item()
                else:
                    answers.append({"score": score.item(), "start": begin, "end": finish, "answer": text})
        if handle_impossible_answer:
            answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
        return answers[0] if len(answers) == 1 else answers


def _char_span(encoding, start: int, end: int, sequence_index: int, align_to_words: bool) -> tuple[int, int]:
    """Character span of tokens start..end in the context; widened to whole words when asked and possible."""
    if align_to_words:
        try:
            start_word, end_word = encoding.token_to_word(start), encoding.token_to_word(end)
            return (
                encoding.word_to_chars(start_word, sequence_index=sequence_index)[0],
                encoding.word_to_chars(end_word, sequence_index=sequence_index)[1],
            )
        except Exception:  # a token without a word (transformers falls back the same way)
            pass
    return encoding.offsets[start][0], encoding.offsets[end][1]
