"""A character-level tokenizer for tiny CPU language models (the In-Context RLVR arithmetic
tasks and tests; real models use :class:`recrl.models.tokenizer.Tokenizer`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class CharTokenizer:
    """Character-level tokenizer for tiny CPU models (pad 0, bos 1, eos 2, then characters).

    Unknown characters map to ``?``; ``decode`` stops at nothing and skips special ids.
    """

    CHARS = "0123456789+-*=() \n:?#QAanswer"

    def __init__(self) -> None:
        chars = sorted(set(self.CHARS))
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self._id = {c: i + 3 for i, c in enumerate(chars)}
        self._char = {i: c for c, i in self._id.items()}

    @property
    def vocab_size(self) -> int:
        """Number of ids (3 specials + characters)."""
        return 3 + len(self._id)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Ids of ``text`` (one per character)."""
        ids = [self._id.get(c, self._id["?"]) for c in text]
        return ([self.bos_id] if add_bos else []) + ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids`` without special tokens."""
        return "".join(self._char.get(int(i), "") for i in ids)
