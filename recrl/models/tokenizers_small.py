"""Small tokenizers for CPU-sized models: UTF-8 bytes, and a subword tokenizer restricted
to the ids a corpus uses (GORACS's CPU LMs; SmolLM2's own BPE is
:class:`recrl.models.tokenizer.Tokenizer`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256; the CPU fallback for ``tiny_config``)."""

    pad_id = 0
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        """Bytes of ``text`` (NUL bytes dropped)."""
        return [b for b in text.encode("utf-8") if b]


class CompactTokenizer:
    """A subword tokenizer restricted to the token ids a corpus uses (the CPU model's).

    Text is tokenised by ``base`` (e.g. SmolLM2's BPE); the ids seen in ``corpus`` are
    renumbered ``1 … V−1`` in first-seen order; id 0 is padding and any id outside the
    corpus maps to ``unk_id`` (``V − 1``). A small model then needs a ``V``-row embedding
    instead of the base vocabulary's (~5,000 instead of 49,152 for ML-1M titles + prompts).
    """

    pad_id = 0

    def __init__(self, base: Callable[[str], list[int]], corpus: Sequence[str]):
        self._base = base
        self._ids: dict[int, int] = {}
        for text in corpus:
            for t in base(text):
                self._ids.setdefault(t, len(self._ids) + 1)
        if not self._ids:
            raise ValueError("CompactTokenizer needs a non-empty corpus")
        self.unk_id = len(self._ids) + 1
        self.vocab_size = self.unk_id + 1

    def encode(self, text: str) -> list[int]:
        """Compact ids of ``text`` (``unk_id`` for base ids the corpus never used)."""
        return [self._ids.get(t, self.unk_id) for t in self._base(text)]
