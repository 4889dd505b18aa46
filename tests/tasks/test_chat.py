"""The chat task and the OpenAI request parser it shares with the endpoint
(pipeline/tasks/openai_request.py): request bodies into prompts and vLLM sampling
parameters, checked by vLLM's own request models; what it cannot serve is an error of a
clear kind (no engine)."""

from __future__ import annotations

import pytest

from pipeline.config import TasksConfig
from pipeline.errors import ErrorKind
from pipeline.tasks import TaskInputError, build_tasks
from pipeline.tasks.chat import CHAT_URL, COMPLETIONS_URL, request_text
from pipeline.tasks.openai_request import parse_request
from pipeline.tasks.prompting import PromptTooLong, render_tokens


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def chat():
    return build_tasks(TasksConfig(chat={}))[0]


def test_chat_body_to_messages_and_sampling() -> None:
    req = parse_request(CHAT_URL, {
        "model": "gpt-4o-mini", "metadata": {"k": "v"},  # accepted, change nothing
        "messages": [{"role": "developer", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "temperature": 0, "max_completion_tokens": 7, "max_tokens": 99, "stop": ["\n"], "seed": 3,
    })
    # 'developer' is 'system' to chat templates; text parts joined as vLLM joins them.
    assert req.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a\nb"}]
    assert req.max_tokens == 7  # max_completion_tokens wins
    p = req.sampling_params(req.max_tokens)
    assert (p.temperature, p.max_tokens, p.stop, p.seed) == (0.0, 7, ["\n"], 3)


def test_openai_defaults_then_the_task_config(chat) -> None:
    p = chat.for_text(request_text(CHAT_URL, {"messages": user("x")})).sampling_params()
    assert (p.temperature, p.top_p, p.max_tokens) == (1.0, 1.0, None)  # None: the room left in the context
    from pipeline.tasks.base import SamplingOverride

    req = parse_request(CHAT_URL, {"messages": user("x"), "top_p": 0.5}, SamplingOverride(temperature=0.7, max_tokens=9, top_p=0.9))
    p = req.sampling_params(req.max_tokens)
    assert (p.temperature, p.top_p, p.max_tokens) == (0.7, 0.5, 9)  # the body wins where it says


def test_completion_body(chat) -> None:
    t = chat.for_text(request_text(COMPLETIONS_URL, {"prompt": ["Once upon a time"], "temperature": 0}))
    assert (t.request.prompts, t.request.add_special_tokens) == (["Once upon a time"], True)
    assert t.sampling_params().max_tokens == 16  # OpenAI's default max_tokens
    req = parse_request(COMPLETIONS_URL, {"prompt": [5, 6, 7], "add_special_tokens": False, "max_tokens": 4})
    assert (req.prompts, req.add_special_tokens, req.max_tokens) == ([[5, 6, 7]], False, 4)
    # Several prompts and streaming: the endpoint's to serve, not a batch line's.
    req = parse_request(COMPLETIONS_URL, {"prompt": ["a", "b"], "stream": True,
                                          "stream_options": {"include_usage": True}}, streaming=True)
    assert (req.prompts, req.stream, req.include_usage, req.max_tokens) == (["a", "b"], True, True, None)


@pytest.mark.parametrize(
    "url, body, kind, needle",
    [
        (CHAT_URL, {"messages": user("x"), "n": 2}, ErrorKind.UNSUPPORTED_REQUEST, "body.n=2"),
        (CHAT_URL, {"messages": user("x"), "stream": True}, ErrorKind.UNSUPPORTED_REQUEST, "not streamed"),
        (CHAT_URL, {"messages": user("x"), "tools": [{"type": "function"}]}, ErrorKind.UNSUPPORTED_REQUEST, "tools"),
        (CHAT_URL, {"messages": user("x"), "frobnicate": 1}, ErrorKind.UNSUPPORTED_REQUEST, "body.frobnicate"),
        (CHAT_URL, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
         ErrorKind.UNSUPPORTED_REQUEST, "image_url parts"),
        (CHAT_URL, {"messages": []}, ErrorKind.INVALID_REQUEST, "messages is empty"),
        (CHAT_URL, {}, ErrorKind.INVALID_REQUEST, "body.messages"),
        (CHAT_URL, {"messages": user("x"), "temperature": "hot"}, ErrorKind.INVALID_REQUEST, "body.temperature"),
        (COMPLETIONS_URL, {"prompt": ["a", "b"]}, ErrorKind.UNSUPPORTED_REQUEST, "2 prompts"),
        (COMPLETIONS_URL, {"prompt": "a", "suffix": "z"}, ErrorKind.UNSUPPORTED_REQUEST, "suffix"),
        (COMPLETIONS_URL, {"prompt": "a", "logprobs": 2}, ErrorKind.UNSUPPORTED_REQUEST, "log-probabilities"),
        (COMPLETIONS_URL, {"max_tokens": 3}, ErrorKind.INVALID_REQUEST, "body.prompt"),
        (COMPLETIONS_URL, {"prompt": ""}, ErrorKind.INVALID_REQUEST, "non-empty"),
        (COMPLETIONS_URL, {"prompt": []}, ErrorKind.INVALID_REQUEST, "prompt is empty"),
        (COMPLETIONS_URL, {"prompt": "a", "messages": user("x")}, ErrorKind.UNSUPPORTED_REQUEST, "body.messages"),
    ],
)
def test_requests_not_served_are_errors_of_a_kind(chat, url, body, kind, needle) -> None:
    with pytest.raises(TaskInputError) as e:
        chat.for_text(request_text(url, body))
    assert e.value.kind == kind
    assert needle in str(e.value)


def test_prompts_chat_through_the_template_completion_raw(chat, tiny_tokenizer) -> None:
    c = chat.for_text(request_text(CHAT_URL, {"messages": user("hello there"), "max_tokens": 3}))
    ids, _ = render_tokens(c, "ignored", tiny_tokenizer, 512, c.context_policy())
    expected = tiny_tokenizer.apply_chat_template(user("hello there"), add_generation_prompt=True, tokenize=False)
    assert ids == tiny_tokenizer.encode(expected, add_special_tokens=False)
    assert c.sampling_params().max_tokens == 3

    t = chat.for_text(request_text(COMPLETIONS_URL, {"prompt": "hello there"}))
    ids, _ = render_tokens(t, "ignored", tiny_tokenizer, 512, t.context_policy())
    assert ids == tiny_tokenizer.encode("hello there")  # as vLLM's server tokenizes it: special tokens added
    t = chat.for_text(request_text(COMPLETIONS_URL, {"prompt": [3, 4, 5]}))
    assert render_tokens(t, "", tiny_tokenizer, 512, "reject")[0] == [3, 4, 5]
    with pytest.raises(TaskInputError, match="outside the vocabulary"):
        t = chat.for_text(request_text(COMPLETIONS_URL, {"prompt": [len(tiny_tokenizer) + 5]}))
        render_tokens(t, "", tiny_tokenizer, 512, "reject")


def test_a_request_is_never_truncated(chat, tiny_tokenizer) -> None:
    long = " ".join(f"word{i}" for i in range(2000))
    for url, body in ((CHAT_URL, {"messages": user(long)}), (COMPLETIONS_URL, {"prompt": long})):
        t = chat.for_text(request_text(url, body))
        assert t.context_policy("truncate") == "reject"  # an engine-wide truncate does not apply
        with pytest.raises(PromptTooLong):
            render_tokens(t, "", tiny_tokenizer, 256, t.context_policy("truncate"))


def test_parse_keeps_the_answer_as_generated(chat) -> None:
    from pipeline.tasks import Completion

    t = chat.for_text(request_text(COMPLETIONS_URL, {"prompt": "x"}))
    cols = t.parse(Completion(text=" two words\n", token_ids=[1, 2], finish_reason="stop"))
    assert cols["output_text"] == " two words\n" and cols["url"] == COMPLETIONS_URL
