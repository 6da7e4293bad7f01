"""Configuration of a Llama-architecture decoder (sizes, RoPE, norms, dtypes)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Sizes and numerics of a Llama-family decoder-only transformer.

    Attributes:
      vocab_size: number of token ids.
      dim: residual width ``d``.
      n_layers: number of transformer blocks.
      n_heads: query heads.
      n_kv_heads: key/value heads (grouped-query attention); divides ``n_heads``.
      head_dim: width of one head (``dim // n_heads`` when left as None).
      ffn_dim: hidden width of the SwiGLU MLP.
      rope_base: RoPE frequency base ``b``; pair ``i`` rotates at ``b^{-2i/head_dim}``.
      norm_eps: RMSNorm epsilon.
      tie_embeddings: the LM head is the transposed token embedding.
      max_seq_len: longest sequence the model is meant for (checked by samplers).
      dtype: activation / KV-cache dtype (``"float32"`` or ``"bfloat16"``).
      param_dtype: parameter storage dtype.
      init_std: standard deviation of the random normal initialiser.
    """

    vocab_size: int = 256
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int | None = None
    ffn_dim: int = 128
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_seq_len: int = 2048
    dtype: str = "float32"
    param_dtype: str = "float32"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                     "ffn_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if not self.rope_base > 1.0:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}")
        if not self.norm_eps > 0.0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if not self.init_std > 0.0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"{name} must be one of {_DTYPES}, got {getattr(self, name)!r}")

    @property
    def jnp_dtype(self) -> jnp.dtype:
        """Activation dtype as a NumPy dtype."""
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self) -> jnp.dtype:
        """Parameter dtype as a NumPy dtype."""
        return jnp.dtype(self.param_dtype)

    @property
    def n_params(self) -> int:
        """Number of base parameters (embedding, blocks, final norm, untied head)."""
        d, hd = self.dim, self.head_dim
        attn = d * hd * (self.n_heads * 2 + self.n_kv_heads * 2)
        block = attn + 3 * d * self.ffn_dim + 2 * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * block + d + head

    def replace(self, **changes: Any) -> LlamaConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able field dict (round-trips through ``LlamaConfig(**d)``)."""
        return dataclasses.asdict(self)


def tiny_config(**changes: Any) -> LlamaConfig:
    """A 2-block, d=64 model for tests (4 query heads, 2 KV heads, vocab 256)."""
    return LlamaConfig(**changes)


def smollm2_135m_config(**changes: Any) -> LlamaConfig:
    """SmolLM2-135M: 30 blocks, d=576, ffn 1536, 9 heads / 3 KV heads, RoPE base 1e5."""
    base = dict(
        vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
        ffn_dim=1536, rope_base=100000.0, norm_eps=1e-5, tie_embeddings=True,
        max_seq_len=8192,
    )
    base.update(changes)
    return LlamaConfig(**base)
