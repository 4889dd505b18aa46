"""Rebuild short_reviews.jsonl: 100 positive + 100 negative single-sentence movie-review snippets.

Source: movieReviewSnippets_GroundTruth.txt and movieReviewSnippets_anonDataRatings.txt in
additional_resources/hutto_ICWSM_2014.tar.gz of the vaderSentiment 3.3.2 source
distribution on PyPI (MIT). Each snippet (Rotten Tomatoes, from Pang & Lee 2005) carries
the mean and standard deviation of about 20 human ratings on -4..+4 (Hutto & Gilbert 2014).

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d /tmp/vader
    tar xzf /tmp/vader/vaderSentiment-3.3.2.tar.gz -C /tmp/vader
    tar xzf /tmp/vader/vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz -C /tmp/vader
    python data/eval/build_short_reviews.py /tmp/vader/hutto_ICWSM_2014 > data/eval/short_reviews.jsonl
    python data/eval/build_short_reviews.py /tmp/vader/hutto_ICWSM_2014 --neutral > data/eval/neutral_reviews.jsonl

--neutral: the snippets people rated neutral (mean within 0.3 of 0, standard deviation at
most 1.0; same length and one-sentence rules), up to 50 by a fixed shuffle, label "neutral".
They were not read by hand one by one: they measure how often a classifier says neutral.
"""

import html
import json
import random
import re
import sys
from pathlib import Path

# Snippets read by hand and left out: they need context to be understood, or their
# sentiment is not clearly about the film (see README.md).
REJECTED: dict[str, str] = {
    "4425": "praises only the first two thirds of the film: mixed",
}
PER_CLASS = 100
SEED = 13
_NEXT_SENTENCE = re.compile(r"[.!?][\"')]*\s+[\"'(]?[A-Z0-9]")


NEUTRAL_MAX = 50


def main(folder: str, neutral: bool = False) -> None:
    d = Path(folder)
    spread = {}
    for line in open(d / "movieReviewSnippets_anonDataRatings.txt", encoding="utf-8"):
        sid, mean, sd, *_ = line.rstrip("\r\n").split("\t")
        spread[sid] = float(sd)
    pools: dict[str, list[dict]] = {"positive": [], "negative": []}
    for line in open(d / "movieReviewSnippets_GroundTruth.txt", encoding="utf-8"):
        sid, mean, text = line.rstrip("\r\n").split("\t", 2)
        text = html.unescape(text.replace("''", '"').replace("\u2019", "'").replace("\u2018", "'")).strip()
        text = re.sub(r"\s{2,}", " - ", text)  # the source dropped dashes: "comedy -- ugh" became "comedy  ugh"
        m = float(mean)
        # Short, one sentence, and clear: raters agree (sd <= 1) on a mean at least 2 from neutral.
        if not 5 <= len(text.split()) <= 20 or _NEXT_SENTENCE.search(text) or not text.isascii():
            continue
        if neutral:
            if spread[sid] <= 1.0 and abs(m) <= 0.3:
                pools.setdefault("neutral", []).append({"id": f"rt-{sid}", "text": text, "label": "neutral",
                                                        "human_mean": round(m, 3), "human_sd": spread[sid]})
            continue
        if spread[sid] > 1.0 or abs(m) < 2.0:
            continue
        label = "positive" if m > 0 else "negative"
        pools[label].append({"id": f"rt-{sid}", "text": text, "label": label,
                             "human_mean": round(m, 3), "human_sd": spread[sid]})
    if neutral:
        rows = random.Random(f"{SEED}-neutral").sample(pools["neutral"], len(pools["neutral"]))[:NEUTRAL_MAX]
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        return
    rows = []
    for label in ("positive", "negative"):
        # A fixed shuffle per class; a snippet rejected on reading is replaced by the next one.
        order = random.Random(f"{SEED}-{label}").sample(pools[label], len(pools[label]))
        rows += [r for r in order if r["id"].removeprefix("rt-") not in REJECTED][:PER_CLASS]
    random.Random(SEED).shuffle(rows)
    for r in rows:
        print(json.dumps(r, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1], neutral="--neutral" in sys.argv[2:])
