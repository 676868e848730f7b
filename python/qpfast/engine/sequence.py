"""One query's decoding state inside the engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..matcher import Matcher
from .draft import DraftIndex


@dataclass(eq=False)
class Sequence:
    """A query being decoded.

    `pending` are tokens whose KV is not computed yet: the next forward pass appends them
    all (the prompt suffix at admission; later the picked token plus any tokens the matcher
    forces after it). `own_len` counts this sequence's tokens in its KV-cache slot (the
    shared prefix excluded). `out_ids` are the accepted output tokens, end token included.
    """

    index: int                 # position in the caller's list
    query: str
    matcher: Matcher
    suffix_ids: list[int]
    pending: list[int] = field(default_factory=list)
    own_len: int = 0
    out_ids: list[int] = field(default_factory=list)
    forwards: int = 0          # forward passes this sequence took part in
    jumped: int = 0            # tokens appended without a pick (jump-forward)
    error: Optional[str] = None
    drafts: Optional[DraftIndex] = None   # its tokens so far, for speculative drafts

    @property
    def finished(self) -> bool:
        return self.error is not None or self.matcher.is_finished()

    def accept(self, token: int, fed: bool = False) -> bool:
        """Accepts the next output token; it joins `pending` unless `fed` (a verified draft
        whose KV the last forward pass already computed) or it ends the output."""
        if not self.matcher.accept(token):
            self.error = f"decoder rejected token {token} (internal error)"
            return False
        self.out_ids.append(token)
        if self.drafts is not None:
            self.drafts.append(token)
        if fed:
            self.own_len += 1
        elif not self.matcher.is_finished():
            self.pending.append(token)
        return True

    def accepted(self, tokens: list[int]) -> None:
        """Records output tokens its matcher already accepted (`qpfast.matcher.advance_rows`):
        they join `pending`, but for an end token."""
        if not tokens:
            return
        self.out_ids.extend(tokens)
        if self.drafts is not None:
            self.drafts.extend(tokens)
        self.pending.extend(tokens[:-1] if self.matcher.is_finished() else tokens)
