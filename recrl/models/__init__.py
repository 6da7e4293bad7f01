"""Llama-architecture language models in Flax NNX, shared by the GORACS and RLVR pipelines.

Typical use::

    from flax import nnx
    from recrl import models

    model = models.load_gguf(models.smollm2_path())          # or models.load_hf_llama(dir)
    tok = models.Tokenizer.from_gguf(models.smollm2_path())
    graphdef, params = nnx.split(model)
    prompt = jnp.asarray(tok.encode_chat([{"role": "user", "content": "Hi"}]))
    out = models.sample_group(graphdef, params, prompt, key, num_samples=8,
                              config=models.SamplingConfig(64, stop_tokens=(tok.eos_id,)))
    lp = models.score_completions(graphdef, params, prompt, out.tokens, out.mask)

See ``docs/models.md`` for the design and measured numbers.
"""

from recrl.models.cache import KVCache, Prefix, init_cache
from recrl.models.checkpointing import config_from_meta, restore_model, save_model
from recrl.models.config import LlamaConfig, smollm2_135m_config, tiny_config
from recrl.models.gguf_loader import gguf_config, load_gguf, read_gguf_tensors, smollm2_path
from recrl.models.llama import Llama, create_model, forward, merge, positions_from_mask
from recrl.models.lora import (
    LoRAParam,
    add_lora,
    flatten_grads,
    merge_lora,
    nll_per_sample_grads,
    per_sample_grad_norms,
    per_sample_grads,
    split_lora,
)
from recrl.models.safetensors_loader import hf_config, hf_tokenizer, load_hf_llama
from recrl.models.sampling import (
    SampleOutput,
    SamplingConfig,
    sample,
    sample_group,
    sample_prefix_groups,
    sample_with_prefixes,
)
from recrl.models.scoring import (
    logprobs,
    logprobs_from_prefix,
    logprobs_with_prefixes,
    prefix_cache,
    score_completions,
    sequence_nll,
    token_logprobs,
)
from recrl.models.tokenizer import Tokenizer, pad_batch
from recrl.models.weights import model_from_weights, model_weights

__all__ = [
    "KVCache",
    "Llama",
    "LlamaConfig",
    "LoRAParam",
    "Prefix",
    "SampleOutput",
    "SamplingConfig",
    "Tokenizer",
    "add_lora",
    "config_from_meta",
    "create_model",
    "flatten_grads",
    "forward",
    "gguf_config",
    "hf_config",
    "hf_tokenizer",
    "init_cache",
    "load_gguf",
    "load_hf_llama",
    "logprobs",
    "logprobs_from_prefix",
    "logprobs_with_prefixes",
    "merge",
    "merge_lora",
    "model_from_weights",
    "model_weights",
    "nll_per_sample_grads",
    "pad_batch",
    "per_sample_grad_norms",
    "per_sample_grads",
    "positions_from_mask",
    "prefix_cache",
    "read_gguf_tensors",
    "restore_model",
    "sample",
    "sample_group",
    "sample_prefix_groups",
    "sample_with_prefixes",
    "save_model",
    "score_completions",
    "sequence_nll",
    "smollm2_135m_config",
    "smollm2_path",
    "split_lora",
    "tiny_config",
    "token_logprobs",
]
