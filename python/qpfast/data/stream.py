"""The unlabelled query stream for training stage 1 (knowledge injection).

Stage 1 of the source paper trains on ~10^7 historical queries labelled by the legacy
pipeline. Here the "historical" queries come from the same generator with the labels
discarded, and a share of them perturbed (`qpfast.data.perturb`) so the stream is noisier
than the templates. By default the stream draws from the *train* split only, so stage 1
never sees a test entity value or template.

Real logs are far more varied in phrasing than a few hundred templates. Two options widen
the stream without touching another split:

- `splice`: the head of one drafted query joined to the tail of another (from any train
  template), so words meet in contexts no template has;
- `keyword_share` with `keywords` (category -> words, e.g. the legacy pipeline's keyword
  table): short "bare keyword" queries, one drafted entity chunk plus one or two topic
  words and an optional ask. Whatever the legacy pipeline knows about such words reaches
  the model through its pseudo-labels, which is what knowledge injection is for;
- `word_share` with `words` (e.g. `qpfast.data.dictionary.common_words`): queries whose
  literal words are each swapped, with probability 1/2, for a dictionary word, so the words
  of the language (not just the templates') reach the model with the legacy pipeline's
  segmentation of them;
- `keyword_plant` with `keywords`: template queries with one literal word replaced by a
  topic word of a random category, so the legacy pipeline's category rules meet their
  keywords inside whole query frames, not only in bare keyword queries;
- `keyword_context` with `keywords` and `words`: bare keyword queries with one to three
  dictionary words around them and, half the time, a topic word of another category, so
  the keywords decide the pseudo-label in contexts no template has, conflicts included.
"""
from __future__ import annotations

import itertools
import random
from typing import Iterator, Mapping, Sequence

from ..normalize import normalize
from .generator import Piece, QueryGenerator, compose
from .perturb import PERTURBATIONS, chunks_of

#: Asks a bare keyword query may end with (text, weight level), "" for none.
KEYWORD_ASKS = (("", 0), ("", 0), ("推荐", 1), ("怎么样", 0), ("哪个好", 1), ("求推荐", 1), ("攻略", 1),
                ("分享", 1), ("好用吗", 1), ("怎么选", 1), ("测评", 1), ("避雷", 1))


def splice(a: list[Piece], b: list[Piece], rng: random.Random) -> list[Piece]:
    """The chunks of `a` before a random cut, then the chunks of `b` from a random cut."""
    ca, cb = chunks_of(a), chunks_of(b)
    i = rng.randint(1, max(1, len(ca) - 1))
    j = rng.randint(0, max(0, len(cb) - 1))
    head = [p for c in ca[:i] for p in c]
    tail = [Piece(p.text, p.weight, p.type, p.surface, p.chunk + 1000) for c in cb[j:] for p in c]
    return head + tail or list(a)


def keyword_query(pieces: list[Piece], keywords: Mapping[str, Sequence[str]], rng: random.Random) -> list[Piece]:
    """One entity chunk of `pieces` (if any) with 1-2 topic words of one category and an ask."""
    entity = [c for c in chunks_of(pieces) if any(p.type is not None for p in c)]
    words = list(keywords[rng.choice(sorted(keywords))])
    parts = [[Piece(w, 2, None, w, -10 - k)] for k, w in enumerate(rng.sample(words, min(len(words), rng.randint(1, 2))))]
    if entity:
        parts.insert(rng.randint(0, len(parts)), rng.choice(entity))
    ask, w = rng.choice(KEYWORD_ASKS)
    if ask:
        parts.append([Piece(ask, w, None, ask, -20)])
    return [p for c in parts for p in c]


def swap_words(pieces: list[Piece], words: Sequence[str], cum_weights: Sequence[float] | None,
               rng: random.Random, p: float = 0.5) -> list[Piece]:
    """`pieces` with each literal (non-entity) piece replaced, with probability `p`, by a word
    drawn from `words` (by cumulative weights `cum_weights`, uniform if None); entity pieces
    are kept."""
    out = []
    for piece in pieces:
        if piece.type is None and rng.random() < p:
            w = rng.choices(words, cum_weights=cum_weights)[0]
            piece = Piece(w, piece.weight, None, w, piece.chunk)
        out.append(piece)
    return out


def plant_keyword(pieces: list[Piece], keywords: Mapping[str, Sequence[str]], rng: random.Random) -> list[Piece]:
    """`pieces` with one literal (non-entity) piece, drawn at random, replaced by a topic word
    of a random category of `keywords`; with no literal piece the word is appended."""
    cat = rng.choice(sorted(keywords))
    word = rng.choice(list(keywords[cat]))
    literal = [i for i, p in enumerate(pieces) if p.type is None]
    if not literal:
        return list(pieces) + [Piece(word, 2, None, word, -30)]
    i = rng.choice(literal)
    out = list(pieces)
    out[i] = Piece(word, pieces[i].weight, None, word, pieces[i].chunk)
    return out


def keyword_in_context(pieces: list[Piece], keywords: Mapping[str, Sequence[str]], words: Sequence[str],
                       cum_weights: Sequence[float] | None, rng: random.Random) -> list[Piece]:
    """`pieces` with one to three words of `words` (drawn by cumulative weights `cum_weights`,
    uniform if None) and, with probability 1/2, a topic word of another category of `keywords`
    (one none of the pieces is a word of), each inserted between two chunks at random; the
    chunks stay whole."""
    chunks = chunks_of(pieces)
    extra = rng.choices(words, cum_weights=cum_weights, k=rng.randint(1, 3))
    texts = {p.text for p in pieces}
    others = [c for c in sorted(keywords) if texts.isdisjoint(keywords[c])]
    if others and rng.random() < 0.5:
        extra.append(rng.choice(list(keywords[rng.choice(others)])))
    for k, w in enumerate(extra):
        chunks.insert(rng.randint(0, len(chunks)), [Piece(w, 1, None, w, -40 - k)])
    return [p for c in chunks for p in c]


def unlabelled_queries(n: int, seed: int = 0, *, split: str = "train", split_seed: int = 0,
                       perturb: float = 0.3, splice_prob: float = 0.0,
                       keywords: Mapping[str, Sequence[str]] | None = None,
                       keyword_share: float = 0.0, words: Sequence[str] | None = None,
                       word_weights: Sequence[float] | None = None, word_share: float = 0.0,
                       keyword_plant: float = 0.0, keyword_context: float = 0.0) -> Iterator[str]:
    """`n` raw queries, deterministic per seed; each perturbation applies with prob `perturb`,
    a splice of two drafts with prob `splice_prob`; a `keyword_share` of the queries are bare
    keyword queries over `keywords`, a `keyword_context` share of those with dictionary
    `words` around them (`keyword_in_context`); a `word_share` of the others have their literal
    words swapped for `words` (drawn by `word_weights`, uniform if None), and a
    `keyword_plant` share of them one literal word replaced by a topic word of `keywords`."""
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    for name, p in (("perturb", perturb), ("splice_prob", splice_prob), ("keyword_share", keyword_share),
                    ("word_share", word_share), ("keyword_plant", keyword_plant),
                    ("keyword_context", keyword_context)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}: must be in [0, 1], got {p}")
    if (keyword_share or keyword_plant) and not keywords:
        raise ValueError("keywords: required (a non-empty mapping) when keyword_share or keyword_plant > 0")
    if (word_share or keyword_context) and not words:
        raise ValueError("words: required (a non-empty sequence) when word_share or keyword_context > 0")
    if word_weights is not None and (len(word_weights) != len(words or ()) or not all(w >= 0 for w in word_weights)
                                     or not any(word_weights)):
        raise ValueError("word_weights: one non-negative weight per word, not all zero")
    words = list(words or ())
    cum = list(itertools.accumulate(word_weights)) if word_weights is not None else None
    gen = QueryGenerator(split, split_seed=split_seed)
    rng = random.Random(f"qpfast.stream:{seed}:{split}")
    produced = 0
    while produced < n:
        pieces = gen.draft(rng).pieces
        if keyword_share and rng.random() < keyword_share:
            pieces = keyword_query(pieces, keywords, rng)
            if keyword_context and rng.random() < keyword_context:
                pieces = keyword_in_context(pieces, keywords, words, cum, rng)
        else:
            if splice_prob and rng.random() < splice_prob:
                pieces = splice(pieces, gen.draft(rng).pieces, rng)
            if word_share and rng.random() < word_share:
                pieces = swap_words(pieces, words, cum, rng)
            if keyword_plant and rng.random() < keyword_plant:
                pieces = plant_keyword(pieces, keywords, rng)
            for f in PERTURBATIONS:
                if rng.random() < perturb:
                    pieces = f(pieces, rng)
        raw, _, _ = compose(pieces, rng)
        if not str(normalize(raw)):
            continue
        produced += 1
        yield raw
