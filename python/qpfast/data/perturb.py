"""Perturbations of a drafted query, for the unlabelled stage-1 stream.

Real historical queries are messier than templates: users drop function words, put the
words in another order and misspell Latin brand names. Each function takes a draft's
pieces and returns new pieces (the input is not modified); labels no longer apply after
a perturbation, which is why only the unlabelled stream uses them.
"""
from __future__ import annotations

import random
from dataclasses import replace

from .generator import Piece

_KEYBOARD_NEIGHBOURS = {
    "a": "qsz", "b": "vgn", "c": "xdv", "d": "sfe", "e": "wrd", "f": "dgr", "g": "fht", "h": "gjy",
    "i": "uok", "j": "hku", "k": "jli", "l": "kop", "m": "nj", "n": "bmh", "o": "ipl", "p": "ol",
    "q": "wa", "r": "etf", "s": "adw", "t": "ryg", "u": "yij", "v": "cbf", "w": "qes", "x": "zcs",
    "y": "tuh", "z": "xa",
}


def drop_function_words(pieces: list[Piece], rng: random.Random) -> list[Piece]:
    """Remove each droppable literal (weight 0) with probability 0.7; never empties the query."""
    kept = [p for p in pieces if p.type is not None or p.weight > 0 or rng.random() >= 0.7]
    return kept or list(pieces)


def chunks_of(pieces: list[Piece]) -> list[list[Piece]]:
    """Runs of consecutive pieces with the same chunk id (a slot's linked values together)."""
    out: list[list[Piece]] = []
    for p in pieces:
        if out and out[-1][0].chunk == p.chunk:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def swap_order(pieces: list[Piece], rng: random.Random) -> list[Piece]:
    """Swap two content chunks (a slot's linked values move together, e.g. brand + line)."""
    chunks = chunks_of(pieces)
    content = [i for i, c in enumerate(chunks) if any(p.type is not None or p.weight >= 2 for p in c)]
    if len(content) < 2:
        return list(pieces)
    i, j = rng.sample(content, 2)
    chunks[i], chunks[j] = chunks[j], chunks[i]
    return [p for c in chunks for p in c]


def latin_typo(pieces: list[Piece], rng: random.Random) -> list[Piece]:
    """Misspell one Latin entity value (>= 3 letters): drop, double, swap or mistype a letter."""
    targets = [i for i, p in enumerate(pieces)
               if p.type is not None and sum("a" <= ch <= "z" for ch in p.text) >= 3]
    if not targets:
        return list(pieces)
    i = rng.choice(targets)
    text = pieces[i].text
    letters = [k for k, ch in enumerate(text) if "a" <= ch <= "z"]
    k = rng.choice(letters)
    op = rng.randrange(4)
    if op == 0:
        new = text[:k] + text[k + 1:]
    elif op == 1:
        new = text[:k] + text[k] + text[k:]
    elif op == 2 and k + 1 < len(text) and text[k + 1] != " ":
        new = text[:k] + text[k + 1] + text[k] + text[k + 2:]
    else:
        new = text[:k] + rng.choice(_KEYBOARD_NEIGHBOURS[text[k]]) + text[k + 1:]
    out = list(pieces)
    out[i] = replace(pieces[i], text=new, surface=new)
    return out


PERTURBATIONS = (drop_function_words, swap_order, latin_typo)
"""Every perturbation, in the order the stream applies them."""
