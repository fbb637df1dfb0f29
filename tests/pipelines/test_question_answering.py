"""question-answering against transformers 4.57's pipeline (transformers 5 has none), run apart.

transformers 4.57 needs older tokenizers and huggingface_hub than the test environment's, so it
is installed into a folder of its own and run in a subprocess with that folder first on
PYTHONPATH:

    pip install --no-deps --target DIR transformers==4.57.6 tokenizers==0.22.1 huggingface_hub==0.36.0
    FASTX_TRANSFORMERS4_PATH=DIR python -m pytest tests/pipelines/test_question_answering.py

Without it the comparison skips; the other tests here check what holds whatever the reference:
batched, streamed and single inputs agree, windows of a long context are all read, and the
argument forms 4.57 accepts.
"""

import json
import os
import subprocess
import sys

import pytest

import fastx
from tests.pipelines.conftest import CORPUS, assert_same

CONTEXT = " ".join(CORPUS)
QUESTIONS = ["Where is Hugging Face based?", "What is the capital of Italy?", "Who lives in Berlin?"]
LONG_CONTEXT = " ".join(CORPUS * 10)  # ~800 tokens: several windows of 384 at stride 128
CASES = [
    ({"question": QUESTIONS[0], "context": CONTEXT}, {}),
    ([{"question": q, "context": CONTEXT} for q in QUESTIONS], {"top_k": 3}),
    ({"question": QUESTIONS[1], "context": CONTEXT}, {"handle_impossible_answer": True, "top_k": 2}),
    ({"question": QUESTIONS[2], "context": CONTEXT}, {"max_answer_len": 3, "align_to_words": False, "top_k": 4}),
    ({"question": QUESTIONS[1], "context": LONG_CONTEXT}, {"top_k": 5}),
    ({"question": QUESTIONS[0], "context": LONG_CONTEXT}, {"doc_stride": 32, "max_seq_len": 96, "top_k": 2}),
]
REFERENCE = """
import json, sys
import transformers
assert transformers.__version__.startswith("4."), transformers.__version__
request = json.load(sys.stdin)
qa = transformers.pipeline("question-answering", model=request["model"])
print(json.dumps([qa(inputs, **kwargs) for inputs, kwargs in request["cases"]]))
"""


def _reference(folder, cases):
    path = os.environ.get("FASTX_TRANSFORMERS4_PATH")
    if not path:
        pytest.skip("set FASTX_TRANSFORMERS4_PATH to a folder holding transformers 4.57 (see this file's docstring)")
    env = {**os.environ, "PYTHONPATH": path}
    request = json.dumps({"model": str(folder), "cases": cases})
    run = subprocess.run(
        [sys.executable, "-c", REFERENCE], input=request, capture_output=True, text=True, env=env, timeout=300
    )
    if run.returncode != 0:
        pytest.skip(f"transformers 4.57 did not run from FASTX_TRANSFORMERS4_PATH: {run.stderr.strip()[-300:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=["bert", "roberta", "distilbert"])
def checkpoint(request, make_checkpoint):
    return make_checkpoint(request.param, "qa")


def test_answers_equal_transformers_4_57(checkpoint):
    expected = _reference(checkpoint, CASES)
    qa = fastx.pipeline("question-answering", model=checkpoint)
    ours = json.loads(json.dumps([qa(inputs, **kwargs) for inputs, kwargs in CASES]))
    assert_same(ours, expected)


def test_single_batched_and_streamed_inputs_agree(checkpoint):
    qa = fastx.pipeline("question-answering", model=checkpoint)
    examples = [{"question": q, "context": c} for q in QUESTIONS for c in (CONTEXT, LONG_CONTEXT)]
    one_by_one = [qa(e, top_k=2) for e in examples]
    assert_same(qa(examples, batch_size=5, top_k=2), one_by_one)  # batches cut through a long context's windows
    assert_same(list(qa(iter(examples), batch_size=3, top_k=2)), one_by_one)


def test_argument_forms_of_transformers_4_57(checkpoint):
    qa = fastx.pipeline("question-answering", model=checkpoint)
    single = qa({"question": QUESTIONS[0], "context": CONTEXT})
    assert (
        set(single) == {"score", "start", "end", "answer"}
        and CONTEXT[single["start"] : single["end"]] == single["answer"]
    )
    assert_same(qa(question=QUESTIONS[0], context=CONTEXT), single)
    assert_same(qa(QUESTIONS[0], CONTEXT), single)
    assert_same(qa([{"question": QUESTIONS[0], "context": CONTEXT}]), single)  # a list of one: one result
    both = qa(question=QUESTIONS[:2], context=CONTEXT)
    assert isinstance(both, list) and len(both) == 2
    assert qa({"question": QUESTIONS[1], "context": CONTEXT}, handle_impossible_answer=True, top_k=50)[-1]["score"] >= 0


def test_every_window_of_a_long_context_is_read(checkpoint):
    qa = fastx.pipeline("question-answering", model=checkpoint)
    answers = qa(question=QUESTIONS[1], context=LONG_CONTEXT, top_k=200, max_answer_len=2)
    assert max(a["start"] for a in answers) > len(LONG_CONTEXT) * 3 // 4


def test_bad_inputs_are_named(checkpoint):
    qa = fastx.pipeline("question-answering", model=checkpoint)
    with pytest.raises(ValueError, match="'context'"):
        qa({"question": "Why?", "context": ""})
    with pytest.raises(ValueError, match="doc_stride"):
        qa(question="Why?", context=CONTEXT, doc_stride=500)
    with pytest.raises(ValueError, match="top_k"):
        qa(question="Why?", context=CONTEXT, top_k=0)
    with pytest.raises(ValueError, match="same length|one length"):
        qa(question=["a", "b"], context=["c"])
