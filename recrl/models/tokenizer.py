"""Byte-level BPE tokenizers (from GGUF metadata or ``tokenizer.json``), ChatML, batch padding."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

try:
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers
except ImportError as e:
    from recrl._extras import missing

    raise missing(__name__, "lm", e) from e

Message = Mapping[str, str]


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with its special ids and a ChatML template.

    Attributes:
      hf: the wrapped ``tokenizers.Tokenizer``.
      bos_id: beginning-of-sequence id (or None).
      eos_id: end-of-turn / end-of-sequence id (sampling's stop token).
      pad_id: padding id.
      default_system: system message inserted by ``chat`` when the conversation has none
        (None: insert nothing).
    """

    def __init__(self, hf: tokenizers.Tokenizer, *, bos_id: int | None, eos_id: int,
                 pad_id: int | None = None, default_system: str | None = None):
        self.hf = hf
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = eos_id if pad_id is None else pad_id
        self.default_system = default_system

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        """The id of one vocabulary entry (e.g. ``"<|im_start|>"``)."""
        idx = self.hf.token_to_id(token)
        if idx is None:
            raise KeyError(f"{token!r} is not in the vocabulary")
        return idx

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of ``text`` (special tokens written in the text are recognised).

        Raises:
          TypeError: ``text`` is not a ``str``.
          ValueError: ``text`` is not valid Unicode (e.g. a lone surrogate), with its index.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() needs a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text is not valid Unicode: {text[e.start:e.end]!r} at index "
                             f"{e.start} ({e.reason}); it cannot be tokenised") from None
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos and self.bos_id is not None else []) + ids

    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (special tokens dropped by default).

        Raises:
          ValueError: an id outside ``[0, vocab_size)`` (its position and value named).
        """
        arr = np.asarray(ids).reshape(-1)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
        n = self.vocab_size
        bad = np.flatnonzero((arr < 0) | (arr >= n))
        if bad.size:
            raise ValueError(f"token id {int(arr[bad[0]])} at position {int(bad[0])} is outside "
                             f"the vocabulary [0, {n})")
        return self.hf.decode(arr.tolist(), skip_special_tokens=skip_special_tokens)

    def chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        """ChatML text: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message.

        A ``default_system`` message is prepended when the first message is not a system one;
        ``add_generation_prompt`` appends ``<|im_start|>assistant\\n``.
        """
        parts = []
        if self.default_system is not None and (not messages or
                                                messages[0]["role"] != "system"):
            parts.append(f"<|im_start|>system\n{self.default_system}<|im_end|>\n")
        for m in messages:
            parts.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    def encode_chat(self, messages: Sequence[Message], *,
                    add_generation_prompt: bool = True) -> list[int]:
        """Token ids of ``chat(messages)``."""
        return self.encode(self.chat(messages, add_generation_prompt=add_generation_prompt))

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> Tokenizer:
        """Builds the byte-level BPE tokenizer stored in a GGUF file's ``tokenizer.ggml.*``.

        Pre-tokenisation splits digits individually, then applies the GPT-2 ByteLevel regex
        (no prefix space); token type 3 (control) entries become special tokens.
        """
        try:
            import gguf
        except ImportError as e:
            from recrl._extras import missing

            raise missing("recrl.models.Tokenizer.from_gguf", "lm", e) from e

        reader = gguf.GGUFReader(os.fspath(path))

        def get(key, default=None):
            f = reader.fields.get(key)
            return default if f is None else f.contents()

        if get("tokenizer.ggml.model") != "gpt2":
            raise ValueError(f"{path}: tokenizer model {get('tokenizer.ggml.model')!r} is not "
                             "byte-level BPE ('gpt2')")
        tokens = list(get("tokenizer.ggml.tokens"))
        merges = [tuple(m.split(" ", 1)) for m in get("tokenizer.ggml.merges")]
        types = list(get("tokenizer.ggml.token_type", [1] * len(tokens)))
        special = [t for t, ty in zip(tokens, types, strict=True) if ty == 3]
        eos = int(get("tokenizer.ggml.eos_token_id"))
        bos = get("tokenizer.ggml.bos_token_id")
        pad = get("tokenizer.ggml.padding_token_id")
        template = get("tokenizer.chat_template", "") or ""
        found = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", template)
        hf = byte_level_bpe({t: i for i, t in enumerate(tokens)}, merges, special)
        return cls(hf, bos_id=None if bos is None else int(bos), eos_id=eos,
                   pad_id=None if pad is None else int(pad),
                   default_system=found.group(1) if found else None)

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, bos_token: str | None = None,
                  eos_token: str = "<|im_end|>", pad_token: str | None = None,
                  default_system: str | None = None) -> Tokenizer:
        """Loads a Hugging Face ``tokenizer.json``; special ids are looked up by token text."""
        hf = tokenizers.Tokenizer.from_file(os.fspath(Path(path)))

        def tid(tok):
            return None if tok is None else hf.token_to_id(tok)

        eos = tid(eos_token)
        if eos is None:
            raise ValueError(f"eos token {eos_token!r} is not in {path}")
        return cls(hf, bos_id=tid(bos_token), eos_id=eos, pad_id=tid(pad_token),
                   default_system=default_system)


def byte_level_bpe(vocab: dict[str, int], merges: Sequence[tuple[str, str]],
                   special_tokens: Sequence[str] = ()) -> tokenizers.Tokenizer:
    """A GPT-2 style byte-level BPE: individual digits, ByteLevel regex split, BPE merges.

    Args:
      vocab: token string (byte-level alphabet) -> id.
      merges: merge rules in priority order.
      special_tokens: tokens matched verbatim before BPE and never split.

    Returns:
      A ``tokenizers.Tokenizer``.
    """
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=list(merges), fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                            for t in special_tokens])
    return tok


def pad_batch(seqs: Sequence[Sequence[int]], *, pad_id: int = 0, side: str = "left",
              length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pads token lists into ``(tokens int32 [B, L], mask bool [B, L])``.

    Args:
      seqs: token id lists.
      pad_id: filler id.
      side: ``"left"`` (prompts for sampling) or ``"right"`` (completions).
      length: ``L``; default the longest sequence.

    Returns:
      Tokens and the mask of real tokens.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    n = max((len(s) for s in seqs), default=0) if length is None else length
    tokens = np.full((len(seqs), n), pad_id, np.int32)
    mask = np.zeros((len(seqs), n), bool)
    for i, s in enumerate(seqs):
        if len(s) > n:
            raise ValueError(f"sequence {i} has {len(s)} tokens > length {n}")
        sl = slice(n - len(s), n) if side == "left" else slice(0, len(s))
        tokens[i, sl] = s
        mask[i, sl] = True
    return tokens, mask
