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

Names are imported lazily (PEP 562): the tokenizers and the GGUF / safetensors readers need
the ``[lm]`` extra, while ``recrl.models.attention`` and ``recrl.models.cache`` (the
ProRL policy's block and KV cache) need only the core install.
"""

from recrl._extras import lazy_exports

_EXPORTS = {
    "KVCache": "cache",
    "Llama": "llama",
    "LlamaConfig": "config",
    "LoRAParam": "lora",
    "Prefix": "cache",
    "SampleOutput": "sampling",
    "SamplingConfig": "sampling",
    "Tokenizer": "tokenizer",
    "add_lora": "lora",
    "config_from_meta": "checkpointing",
    "create_model": "llama",
    "flatten_grads": "lora",
    "forward": "llama",
    "gguf_config": "gguf_loader",
    "hf_config": "safetensors_loader",
    "hf_tokenizer": "safetensors_loader",
    "init_cache": "cache",
    "load_gguf": "gguf_loader",
    "load_hf_llama": "safetensors_loader",
    "logprobs": "scoring",
    "logprobs_from_prefix": "scoring",
    "logprobs_with_prefixes": "scoring",
    "merge": "llama",
    "merge_lora": "lora",
    "model_from_weights": "weights",
    "model_weights": "weights",
    "nll_per_sample_grads": "lora",
    "pad_batch": "tokenizer",
    "per_sample_grad_norms": "lora",
    "per_sample_grads": "lora",
    "positions_from_mask": "llama",
    "prefix_cache": "scoring",
    "read_gguf_tensors": "gguf_loader",
    "restore_model": "checkpointing",
    "sample": "sampling",
    "sample_group": "sampling",
    "sample_prefix_groups": "sampling",
    "sample_with_prefixes": "sampling",
    "save_model": "checkpointing",
    "score_completions": "scoring",
    "sequence_nll": "scoring",
    "smollm2_135m_config": "config",
    "smollm2_path": "gguf_loader",
    "split_lora": "lora",
    "tiny_config": "config",
    "token_logprobs": "scoring",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
