"""A tiny random Llama with a real (small) tokenizer: the fixture for fast tests.

Its text is gibberish, but it has everything a real chat model folder has — config.json,
float32 safetensors, a byte-level BPE fast tokenizer (~1,000 tokens) with bos/eos/pad
tokens and a ChatML-style chat template — and vLLM's CPU build loads it in seconds
(head_dim 64: CPU attention rejects smaller sizes such as 16).

torch, transformers and tokenizers are imported inside `build_tiny_model` only.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from .models import MARKER_NAME, build_atomically, is_complete

log = logging.getLogger(__name__)

TINY_VOCAB_SIZE = 1000
TINY_HIDDEN_SIZE = 256
TINY_NUM_HEADS = 4
TINY_NUM_KV_HEADS = 2
TINY_HEAD_DIM = 64
TINY_NUM_LAYERS = 2
TINY_INTERMEDIATE_SIZE = 512
TINY_MAX_POSITIONS = 4096

BOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [BOS_TOKEN, IM_START, EOS_TOKEN, PAD_TOKEN]

# ChatML: "<|im_start|>{role}\n{content}<|im_end|>\n" per turn; the generation prompt
# opens an assistant turn. eos (<|im_end|>) ends an assistant answer.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Files a build writes; a folder holding only these (or nothing) may be rebuilt in place.
_OUTPUT_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    MARKER_NAME,
    MARKER_NAME + ".part",
}

_FIXED_SENTENCES = [
    "The sentiment of this review is positive.",
    "The sentiment of this review is negative.",
    "The sentiment of this text is neutral.",
    "Classify the sentiment as positive, negative or neutral.",
    "Answer with one word: positive, negative or neutral.",
    "Write a short summary of the following article.",
    "Summarize the text in one sentence.",
    "Here is a summary of the main points.",
    "Translate the following text from English to French.",
    "Translate this sentence into French, please.",
    "Bonjour, comment allez-vous aujourd'hui ?",
    "Le chat est sur la table et le chien dort.",
    "Merci beaucoup pour votre aide.",
    "You are a helpful assistant.",
    "The user asks a question and the assistant answers it.",
    "System: follow the instructions carefully.",
    "I loved this movie; the acting was wonderful!",
    "I hated this film. It was boring and far too long.",
    "The product works as expected, nothing special.",
    "Prices rose by 3.5% in 2024, according to the report.",
    "On Monday, 12 March, the council met at 10:30 am.",
    "Email me at info@example.com or call 555-0100.",
    "\"Is it ready?\" she asked. \"Not yet,\" he said.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
]

_SUBJECTS = [
    "The teacher", "A small dog", "My neighbour", "The government", "Our team", "The company",
    "A young scientist", "The old man", "Her brother", "The committee", "This restaurant",
    "The new phone", "The weather", "The city council", "A famous writer", "The students",
    "The market", "Their family", "The museum", "The hospital", "The river", "The train",
]
_VERBS = [
    "announced", "described", "reported", "built", "opened", "closed", "found", "wrote",
    "translated", "summarized", "reviewed", "explained", "visited", "changed", "improved",
    "criticized", "praised", "ignored", "discovered", "delivered", "cancelled", "shared",
]
_OBJECTS = [
    "a new plan", "the final report", "an old bridge", "the results", "a short story",
    "the budget", "a long letter", "the weekly news", "a strange message", "the evidence",
    "the summer festival", "a French recipe", "the annual summary", "the customer reviews",
    "a difficult question", "the water supply", "the school library", "a quiet garden",
]
_ENDINGS = [
    "yesterday", "last week", "this morning", "after the meeting", "in the north of the country",
    "before the election", "during the storm", "for the first time", "without any warning",
    "with great care", "in Paris", "in London", "at the end of the year", "on Friday",
]
_OPINIONS = [
    ("positive", ["excellent", "great", "wonderful", "delightful", "helpful", "friendly", "fast", "good"]),
    ("negative", ["terrible", "awful", "disappointing", "slow", "rude", "broken", "poor", "bad"]),
    ("neutral", ["average", "ordinary", "acceptable", "standard", "typical", "fine", "normal", "okay"]),
]
_THINGS = ["service", "food", "film", "book", "hotel", "staff", "delivery", "price", "screen", "battery"]


def tiny_corpus(n: int = 400) -> list[str]:
    """A few hundred sentences of varied English (and a little French), deterministic."""
    rng = random.Random(1234)
    out = list(_FIXED_SENTENCES)
    while len(out) < n:
        kind = rng.random()
        if kind < 0.45:
            s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ENDINGS)}."
        elif kind < 0.8:
            label, words = rng.choice(_OPINIONS)
            thing = rng.choice(_THINGS)
            s = rng.choice(
                [
                    f"The {thing} was {rng.choice(words)}, so the review is {label}.",
                    f"Review: the {thing} is {rng.choice(words)} and {rng.choice(words)}. Sentiment: {label}.",
                    f"Overall the {thing} felt {rng.choice(words)}; I would call it {label}.",
                ]
            )
        else:
            s = rng.choice(
                [
                    f"Summary: {rng.choice(_SUBJECTS).lower()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}.",
                    f"Translate to French: {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}.",
                    f"Question {rng.randint(1, 99)}: what did {rng.choice(_SUBJECTS).lower()} do {rng.choice(_ENDINGS)}?",
                ]
            )
        out.append(s)
    return out


def _may_replace(dest: Path) -> bool:
    return dest.is_dir() and all(p.name in _OUTPUT_FILES for p in dest.iterdir())


def build_tiny_model(dest: Path, seed: int = 0) -> Path:
    """Build (once) a tiny random Llama chat model into `dest`; return `dest`.

    Deterministic for a given seed. Idempotent: a complete build in `dest` is returned
    as is (regardless of the seed it was built with). Built in a temporary folder and
    renamed into place, under a lock, like the default model.
    """
    dest = Path(dest).absolute()
    if is_complete(dest):
        return dest
    return build_atomically(
        dest,
        lambda tmp: _build(tmp, seed),
        what=f"the tiny test model (seed {seed})",
        may_replace=_may_replace,
    )


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    return tok


def _build(out: Path, seed: int) -> dict:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    t0 = time.monotonic()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        model_max_length=TINY_MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    vocab_size = len(tokenizer)

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=TINY_HIDDEN_SIZE,
        intermediate_size=TINY_INTERMEDIATE_SIZE,
        num_hidden_layers=TINY_NUM_LAYERS,
        num_attention_heads=TINY_NUM_HEADS,
        num_key_value_heads=TINY_NUM_KV_HEADS,
        head_dim=TINY_HEAD_DIM,
        max_position_embeddings=TINY_MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    log.info("Built tiny model (vocab %d, seed %d) in %.1f s: %s", vocab_size, seed, time.monotonic() - t0, out)
    return {"model": "tiny-random-llama", "seed": seed, "vocab_size": vocab_size, "dtype": "float32"}
