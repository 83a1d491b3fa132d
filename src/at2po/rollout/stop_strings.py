"""Stop-string detection on the text of generated tokens, checked after every token.

Only the tail is decoded: a stop string of ``b`` UTF-8 bytes spans at most ``b`` tokens (every token
of a byte-level or byte-fallback vocabulary holds at least one byte), so an occurrence that ends in
the newest token lies inside the text of the last ``b + 1`` tokens. Checking after every token
means an occurrence that ended earlier was already caught, so the cost per token is constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class StopStringMatcher:
    """Finds which stop string, if any, the newest token completed.

    Args:
        tokenizer: a Hugging Face tokenizer; its Rust backend decodes when it has one.
        stop_strings: the strings to watch for.
    """

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str]) -> None:
        self.stop_strings = tuple(stop_strings)
        self.window = 1 + max((len(s.encode("utf-8")) for s in self.stop_strings), default=0)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            self._decode = lambda ids: backend.decode(ids, skip_special_tokens=False)
        else:
            self._decode = lambda ids: tokenizer.decode(
                ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )

    def match(self, generated_ids: Sequence[int]) -> str | None:
        """The stop string (first in the order given) found in the newest tokens' text, or None."""
        if not self.stop_strings:
            return None
        tail = self._decode(list(generated_ids[-self.window :]))
        for stop in self.stop_strings:
            if stop in tail:
                return stop
        return None
