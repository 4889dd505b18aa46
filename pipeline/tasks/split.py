"""Texts longer than one request: split at paragraph, then sentence boundaries, into parts
that fit, counted with the model's own tokenizer.

    doc = Document.parse(text)
    parts = split(doc, counter, limit, lang, mix_paragraphs=False)   # list[Part], in order

A paragraph is a block between blank lines. A paragraph that fits the limit stays whole;
one that does not is cut into sentences by `sentencex` (Wikimedia's rule-based segmenter:
about 300 languages with their abbreviation lists, no model weights, a 1.2 MB wheel with
no dependencies; it segmented 2.3 MB of English in 0.04 s here). spaCy's `sentencizer`
was the other candidate: punctuation only (no abbreviations: "Dr. Smith" is two
sentences) behind a 35 MB wheel and a dozen dependencies. A sentence longer than the limit
(a table, a list without full stops) is cut between tokens. Every cut is a slice of the
original string, so the parts put back together are the text, character for character.

Packing is greedy, in order: as many units as fit the limit per part.
`mix_paragraphs=False` (translation) keeps each part either a run of whole paragraphs or a
run of sentences from one paragraph, so that the answers can be joined back with the
original paragraph breaks; `True` (summaries, labels) packs across paragraph ends too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

# A paragraph ends at a blank line (whitespace-only lines count as blank). This finds
# paragraph breaks only; sentences are sentencex's business.
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n\s*")

Counter = Callable[[Sequence[str]], list[int]]


@dataclass(frozen=True)
class Document:
    """A text as paragraphs and the exact separators between them."""

    paragraphs: tuple[str, ...]
    breaks: tuple[str, ...]  # breaks[i] sits between paragraphs[i] and paragraphs[i + 1]

    @classmethod
    def parse(cls, text: str) -> "Document":
        paragraphs, breaks, at = [], [], 0
        for m in _BLANK_LINE.finditer(text):
            paragraphs.append(text[at : m.start()])
            breaks.append(m.group())
            at = m.end()
        paragraphs.append(text[at:])
        return cls(tuple(paragraphs), tuple(breaks))

    def join(self, paragraphs: Sequence[str]) -> str:
        """Paragraphs (one per source paragraph, e.g. translated) with the original breaks."""
        if len(paragraphs) != len(self.paragraphs):
            raise ValueError(f"{len(paragraphs)} paragraphs for a document of {len(self.paragraphs)}")
        out = [paragraphs[0]]
        for brk, p in zip(self.breaks, paragraphs[1:]):
            out += [brk, p]
        return "".join(out)


@dataclass(frozen=True)
class Unit:
    """What packing moves: a whole paragraph, or a sentence (or a cut of one) of a long one."""

    text: str
    tokens: int
    paragraph: int
    whole: bool


@dataclass(frozen=True)
class Part:
    """The text of one request, and where it came from."""

    text: str
    paragraphs: tuple[int, ...]  # source paragraphs it holds, in order
    whole: bool  # whole paragraphs (else: a run of sentences of paragraphs[0])
    tokens: int  # the units' token counts summed (the real prompt is checked at render)


def token_counter(tokenizer: Any) -> Counter:
    """Token counts of many strings in one call of the (fast) tokenizer."""

    def count(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    return count


def sentences(text: str, lang: str) -> list[str]:
    """`text` cut at sentence ends by sentencex; slices of the original, so they join back to it."""
    import sentencex

    starts = [b["start_index"] for b in sentencex.get_sentence_boundaries(lang or "en", text)]
    starts = sorted({0, *(s for s in starts if 0 < s < len(text))})
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)]) if b > a]


def cut_tokens(text: str, limit: int, tokenizer: Any) -> list[str]:
    """A sentence longer than `limit` tokens, cut between tokens into slices of at most `limit`."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts = [s for s, _ in enc["offset_mapping"]]
    except (NotImplementedError, KeyError, TypeError):  # a slow tokenizer has no offsets: cut by characters
        n = len(tokenizer.encode(text, add_special_tokens=False))
        step = max(1, len(text) * limit // max(n, 1))
        return [text[i : i + step] for i in range(0, len(text), step)]
    cuts = [0] + [starts[i] for i in range(limit, len(starts), limit)] + [len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


def units(doc: Document, count: Counter, limit: int, lang: str, tokenizer: Any) -> list[Unit]:
    """Whole paragraphs where they fit, sentences of those that do not, token cuts of
    sentences that still do not. Blank paragraphs (only at the very start or end) are left out."""
    out: list[Unit] = []
    for i, (para, n) in enumerate(zip(doc.paragraphs, count(doc.paragraphs))):
        if not para.strip():
            continue
        if n <= limit:
            out.append(Unit(para, n, i, True))
            continue
        sents = sentences(para, lang)
        for sent, k in zip(sents, count(sents)):
            if k <= limit:
                out.append(Unit(sent, k, i, False))
            else:
                cuts = cut_tokens(sent, limit, tokenizer)
                out += [Unit(c, m, i, False) for c, m in zip(cuts, count(cuts))]
    return out


def pack(doc: Document, us: Sequence[Unit], limit: int, mix_paragraphs: bool, break_tokens: Sequence[int]) -> list[Part]:
    """Consecutive units, as many as fit `limit` tokens per part, paragraph breaks between
    them counted (`break_tokens[i]`: the break after paragraph i); see the module docstring
    for `mix_paragraphs`."""
    parts: list[Part] = []
    cur: list[Unit] = []
    used = 0

    def flush() -> None:
        nonlocal cur, used
        if cur:
            text = cur[0].text
            for a, b in zip(cur, cur[1:]):
                text += (doc.breaks[a.paragraph] if b.paragraph != a.paragraph else "") + b.text
            paras = tuple(dict.fromkeys(u.paragraph for u in cur))
            parts.append(Part(text, paras, all(u.whole for u in cur), used))
        cur, used = [], 0

    for u in us:
        if cur and not mix_paragraphs:
            last = cur[-1]
            if u.whole != last.whole or (not u.whole and u.paragraph != last.paragraph):
                flush()
        cost = u.tokens + (break_tokens[cur[-1].paragraph] if cur and u.paragraph != cur[-1].paragraph else 0)
        if cur and used + cost > limit:
            flush()
            cost = u.tokens
        cur.append(u)
        used += cost
    flush()
    return parts


def split(
    doc: Document, tokenizer: Any, limit: int, lang: str = "en", mix_paragraphs: bool = False
) -> list[Part]:
    """The document as parts of at most about `limit` text tokens each, in order."""
    if limit < 1:
        raise ValueError(f"no room for text: a part may hold {limit} tokens")
    count = token_counter(tokenizer)
    return pack(doc, units(doc, count, limit, lang, tokenizer), limit, mix_paragraphs, break_tokens(doc, count))


def break_tokens(doc: Document, count: Counter) -> list[int]:
    """What each paragraph break adds to the tokens of the text around it. A break counted
    alone is not what it costs in place: byte-level BPE tokenizers take "\n\n" alone as one
    token but, after a word, as two ("\n", "\n"); counted alone, 20 summaries packed into one
    request came out 10 tokens over. So each break is counted between its neighbours' edge
    words: tokens(left + break + right) - tokens(left) - tokens(right)."""
    if not doc.breaks:
        return []
    lefts = [(p.rsplit(None, 1) or [""])[-1] for p in doc.paragraphs[:-1]]
    rights = [(p.split(None, 1) or [""])[0] for p in doc.paragraphs[1:]]
    joined = count([a + b + c for a, b, c in zip(lefts, doc.breaks, rights)])
    alone_l, alone_r = count(lefts), count(rights)
    return [max(j - l - r, 1) for j, l, r in zip(joined, alone_l, alone_r)]
