"""Turn (task, text) into prompt token ids through the model's chat template.

Shared by the batch actor and the online endpoint. Length policy lives here too: a text
that does not leave room for the task's output tokens is truncated (its start kept) or
rejected, as the job says (policy 'split' is built on 'reject' in pipeline/tasks/execute.py).
"""

from __future__ import annotations

import functools
from typing import Any

from pipeline.tasks.base import Task


class PromptTooLong(ValueError):
    """The text does not fit the context (policy 'reject'); becomes an error record."""


def render_text(task: Task, text: str, tokenizer: Any) -> str:
    return render_chat(task.messages(text), tokenizer)


def render_chat(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """Chat messages as the model's prompt text, the assistant's turn opened. The tasks'
    prompts and the OpenAI-compatible chat route both come through here."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # Base models without a chat template: a plain instruction layout.
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def encode_prompt(prompt: str, tokenizer: Any) -> list[int]:
    """Token ids of a rendered prompt (no special tokens added: the template wrote them)."""
    return _encode(prompt, tokenizer)


def _encode(prompt: str, tokenizer: Any) -> list[int]:
    # The chat template already wrote BOS where the model wants it.
    return tokenizer.encode(prompt, add_special_tokens=False)


def prompt_budget(task: Task, max_model_len: int) -> int:
    """Prompt tokens that leave room for the task's answer."""
    return max_model_len - task.max_output_tokens()


@functools.lru_cache(maxsize=64)  # keyed on the task and tokenizer objects (identity)
def template_tokens(task: Task, tokenizer: Any) -> int:
    """Tokens the prompt takes around the text: the instruction and the chat template."""
    return len(_encode(render_text(task, "", tokenizer), tokenizer))


def render_tokens(
    task: Task, text: str, tokenizer: Any, max_model_len: int, policy: str
) -> tuple[list[int], bool]:
    """Prompt token ids and whether the text was truncated to fit."""
    budget = prompt_budget(task, max_model_len)
    if policy == "truncate":
        # No tokenizer we know packs more than ~32 characters into a token on average text:
        # cutting far-too-long text first keeps tokenizing a 1 MB document cheap.
        cap = budget * 32
        truncated = len(text) > cap
        if truncated:
            text = text[:cap]
    else:
        truncated = False
    own = task.prompt_ids(tokenizer)
    ids = own if own is not None else _encode(render_text(task, text, tokenizer), tokenizer)
    if len(ids) <= budget:
        return ids, truncated
    if policy == "reject" or own is not None:
        other = " or use context_policy: truncate" if "truncate" in task.context_policies else ""
        raise PromptTooLong(
            f"prompt is {len(ids)} tokens; max_model_len {max_model_len} leaves {budget} after "
            f"{task.max_output_tokens()} output tokens (raise engine.max_model_len{other})"
        )
    text_ids = tokenizer.encode(text, add_special_tokens=False)
    overhead = len(ids) - len(text_ids)
    keep = budget - overhead
    for _ in range(4):  # re-tokenizing at the cut can shift a few tokens; converge quickly
        if keep <= 0:
            raise PromptTooLong(
                f"the prompt template alone takes {overhead} tokens, more than the {budget} available"
            )
        cut = tokenizer.decode(text_ids[:keep], skip_special_tokens=True)
        ids = _encode(render_text(task, cut, tokenizer), tokenizer)
        if len(ids) <= budget:
            return ids, True
        keep -= len(ids) - budget
    raise PromptTooLong(f"could not truncate the text to fit {budget} tokens")
