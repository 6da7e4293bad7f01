"""recrl vs Hugging Face transformers on the same weights (used by ``benchmarks.lm --compare``).

The recrl model's arrays are copied into a ``transformers.LlamaForCausalLM`` (kernels
transposed to torch's ``[out, in]``; both use the rotate-half RoPE layout), the two models'
logits are checked to agree, then each op is timed for both, interleaved (recrl, transformers,
recrl, ...) so that both see the same machine load, and the best of ``repeats`` is kept.

Rows: ``greedy`` (``sample`` with temperature 0 vs ``generate(do_sample=False)``), ``sample``
(temperature 1, top-p 0.95, no top-k, vs ``generate(do_sample=True, top_k=0)``), ``score``
(``logprobs`` of ``B`` completions of ``C`` tokens after the prompt vs one forward pass with
``logits_to_keep`` and a log-softmax gather). No stop token: every row generates ``N`` tokens.
recrl's executables are compiled ahead of time (``lower().compile()``, timed: the
``compile s`` column) and the timed calls run them directly.

With a bfloat16 recrl model (``benchmarks.lm --compare transformers --dtype bfloat16``) each
op is timed against transformers in float32 *and* in bfloat16 (the same weights, rounded once),
one row per pair, labelled with both dtypes, and the ``vs fp32 recrl`` column says how far
recrl-bf16 is from recrl-fp32 on the same inputs: greedy/sampled tokens equal (same key), and
for scoring the max / mean absolute per-token log-prob difference.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from recrl import models


def available() -> str | None:
    """``None`` when torch and transformers import, else the reason they do not."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return (f"--compare transformers needs torch and transformers ({e}); install the "
                f"[bench] extra in a separate environment: pip install -e '.[lm,bench]'")
    return None


def hf_model(model: models.Llama, dtype: str | None = None):
    """A ``transformers.LlamaForCausalLM`` (eval mode) holding ``model``'s weights, in
    ``dtype`` (default: the model's ``param_dtype``; float32 or bfloat16)."""
    import torch
    import transformers

    cfg = model.config
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_base, max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
        hidden_act="silu", torch_dtype=torch.float32)
    w = models.model_weights(model)
    t = lambda a: torch.from_numpy(np.array(a, np.float32))  # a writable copy
    sd = {"model.embed_tokens.weight": t(w["embed"]), "model.norm.weight": t(w["final_norm"])}
    sd["lm_head.weight"] = t(w["embed"] if cfg.tie_embeddings else w["lm_head"].T)
    names = {"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",
             "attn.v_proj": "self_attn.v_proj", "attn.o_proj": "self_attn.o_proj",
             "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
             "mlp.down_proj": "mlp.down_proj"}
    for i in range(cfg.n_layers):
        sd[f"model.layers.{i}.input_layernorm.weight"] = t(w[f"layers.{i}.attn_norm"])
        sd[f"model.layers.{i}.post_attention_layernorm.weight"] = t(w[f"layers.{i}.mlp_norm"])
        for ours, theirs in names.items():
            sd[f"model.layers.{i}.{theirs}.weight"] = t(w[f"layers.{i}.{ours}"].T)
    hf = transformers.LlamaForCausalLM(hf_cfg)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise ValueError(f"weights did not map: missing {missing[:4]}, unexpected {unexpected[:4]}")
    if (dtype or cfg.param_dtype) == "bfloat16":
        hf = hf.to(torch.bfloat16)
    return hf.eval()


def max_logit_difference(graphdef, params, hf, prompt_ids) -> float:
    """Largest |recrl - transformers| next-token logit over every slot of the prompt."""
    import torch

    ids = np.asarray([prompt_ids])
    pos = np.arange(ids.shape[1])[None]
    ours = np.asarray(models.forward(graphdef, params, ids, pos)[0])
    with torch.inference_mode():
        theirs = hf(torch.from_numpy(ids)).logits.float().numpy()
    return float(np.abs(ours - theirs).max())


def teacher_forced_agreement(ref_gp, gp, prompt_ids, n_new: int) -> str:
    """How far ``gp``'s next-token distributions are from ``ref_gp``'s (the float32 model it
    was rounded from) along ``ref_gp``'s greedy continuation of the prompt. Teacher forcing
    keeps both on the same context, so one flipped token does not change the rest: mean and
    max ``KL(ref || ours)`` per position and how often the two argmaxes agree."""
    prompt, pmask = models.pad_batch([prompt_ids])
    greedy = models.SamplingConfig(max_new_tokens=n_new, temperature=0.0)
    new = models.sample(*ref_gp, prompt, pmask, jax.random.key(0), config=greedy).tokens
    ids = np.concatenate([np.asarray(prompt), np.asarray(new)], axis=1)
    pos = np.arange(ids.shape[1])[None]
    lp = [np.asarray(jax.nn.log_softmax(models.forward(*g, ids, pos)[0][0]), np.float64)
          for g in (ref_gp, gp)]
    kl = (np.exp(lp[0]) * (lp[0] - lp[1])).sum(-1)
    agree = np.mean(lp[0].argmax(-1) == lp[1].argmax(-1))
    return (f"teacher-forced over the prompt + {n_new} greedy fp32 tokens ({len(kl)} positions):"
            f" KL(fp32 || ours) mean {kl.mean():.1e} max {kl.max():.1e}, argmax equal"
            f" {agree:.0%}")


def _hf_generate(hf, prompt, n_new: int, sample: bool, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    ids = torch.from_numpy(np.asarray(prompt))
    kw = dict(do_sample=True, temperature=1.0, top_p=0.95, top_k=0) if sample else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                          min_new_tokens=n_new, pad_token_id=0, **kw)
    return out[:, ids.shape[1]:].numpy()


def _hf_score(hf, prompt, completion):
    import torch

    ids = torch.from_numpy(np.concatenate([prompt, completion], axis=1))
    c = completion.shape[1]
    with torch.inference_mode():
        logits = hf(ids, logits_to_keep=c + 1).logits[:, :-1]
        lp = torch.log_softmax(logits.float(), dim=-1)
        return lp.gather(-1, ids[:, -c:, None])[..., 0].numpy()


def _interleaved(calls, repeats: int) -> list[float]:
    """Best seconds of each call, run in turn (``calls[0], calls[1], ..., calls[0], ...``)
    after one warm-up call of each."""
    for call in calls:
        jax.block_until_ready(call())
    best = [float("inf")] * len(calls)
    for _ in range(repeats):
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def _compiled(fn, *args, **static):
    """``(executable of jitted fn for args, seconds lower + compile took)``."""
    t0 = time.perf_counter()
    exe = fn.lower(*args, **static).compile()
    return exe, time.perf_counter() - t0


def run(model, graphdef, params, prompt_ids, *, batches, n_new: int, completion: int,
        repeats: int, threads: int, reference=None) -> None:
    """Prints the side-by-side table (see the module docstring).

    ``reference``: ``(model, graphdef, params)`` of the float32 model that a bfloat16 ``model``
    was rounded from; transformers then runs that model's weights in float32 and bfloat16.
    """
    import torch

    torch.set_num_threads(threads)
    dtype = model.config.param_dtype
    ref = reference or (model, graphdef, params)
    hf_dtypes = ("float32", "bfloat16") if reference is not None else (dtype,)
    hfs = [hf_model(ref[0], d) for d in hf_dtypes]
    print(f"# transformers {__import__('transformers').__version__}, torch {torch.__version__}"
          f" ({torch.get_num_threads()} threads); process on {len(os.sched_getaffinity(0))}"
          f" core(s), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
    for d, hf in zip(hf_dtypes, hfs, strict=True):
        diff = max_logit_difference(graphdef, params, hf, prompt_ids)
        print(f"# max |logit difference| on the prompt, recrl {dtype} vs transformers {d}:"
              f" {diff:.2e}", flush=True)
        # float32: the two agree to ~1e-4; bfloat16 roundings differ between the implementations
        if diff > (1e-2 if dtype == d == "float32" else 2.0):
            raise RuntimeError(f"recrl and transformers disagree (max logit difference "
                               f"{diff:.3g})")
    if reference is not None:
        print(f"# recrl {dtype} vs recrl float32, "
              f"{teacher_forced_agreement(ref[1:], (graphdef, params), prompt_ids, n_new)}",
              flush=True)
    print(f"\n{'op':7s} {'batch':>5s} {'tokens':>7s} {'recrl':>8s} {'hf':>8s} {'recrl s':>8s}"
          f" {'hf s':>8s} {'recrl t/s':>10s} {'hf t/s':>8s} {'ratio':>6s} {'compile s':>9s}"
          f"  vs transformers | vs fp32 recrl")
    rng = np.random.default_rng(0)
    for b in batches:
        prompt, pmask = models.pad_batch([prompt_ids] * b)
        for op in ("greedy", "sample", "score"):
            comp = rng.integers(3, model.config.vocab_size, size=(b, completion))
            _print_rows(op, (graphdef, params), ref[1:] if reference else None, hfs, hf_dtypes,
                        dtype, (prompt, pmask, comp), n_new, repeats)


def _print_rows(op, ours_gp, ref_gp, hfs, hf_dtypes, dtype, inputs, n_new, repeats):
    """Times ``op`` for recrl and every transformers model (interleaved); one row per model."""
    prompt, pmask, comp = inputs
    (ours, comp_s), n = _recrl_call(*ours_gp, op, prompt, pmask, n_new, comp)
    theirs = [_hf_call(hf, op, prompt, n_new, comp) for hf in hfs]
    times = _interleaved([ours] + theirs, repeats)
    out = np.asarray(ours())
    accuracy = "" if ref_gp is None else _vs_reference(op, out, _recrl_call(
        *ref_gp, op, prompt, pmask, n_new, comp)[0][0]())
    b = prompt.shape[0]
    for d, call, t_t in zip(hf_dtypes, theirs, times[1:], strict=True):
        t_o = times[0]
        print(f"{op:7s} {b:5d} {b * n:7d} {_short(dtype):>8s} {_short(d):>8s} {t_o:8.3f}"
              f" {t_t:8.3f} {b * n / t_o:10.1f} {b * n / t_t:8.1f} {t_t / t_o:6.2f}"
              f" {comp_s:9.1f}  {_vs_transformers(op, out, call())} | {accuracy}", flush=True)


def _short(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16"}[dtype]


def _recrl_call(graphdef, params, op, prompt, pmask, n_new, comp):
    """``((call, compile seconds), tokens per row)`` of recrl's executable for ``op``."""
    if op == "score":
        cmask = np.ones(comp.shape, bool)
        exe, secs = _compiled(models.logprobs, graphdef, params, prompt, pmask, comp, cmask)
        return (lambda: exe(params, prompt, pmask, comp, cmask), secs), comp.shape[1]
    key = jax.random.key(0)
    sample = op == "sample"
    cfg = models.SamplingConfig(max_new_tokens=n_new, temperature=1.0 if sample else 0.0,
                                top_p=0.95 if sample else 1.0)
    exe, secs = _compiled(models.sample, graphdef, params, prompt, pmask, key, config=cfg)
    return (lambda: exe(params, prompt, pmask, key).tokens, secs), n_new


def _hf_call(hf, op, prompt, n_new, comp):
    if op == "score":
        return lambda: _hf_score(hf, np.asarray(prompt), comp)
    return lambda: _hf_generate(hf, prompt, n_new, op == "sample")


def _vs_transformers(op, ours, theirs) -> str:
    if op == "score":
        return f"max |log-prob diff| {np.abs(ours - theirs).max():.1e}"
    return f"tokens equal {np.mean(ours == theirs):.0%}" if op == "greedy" else "-"


def _vs_reference(op, ours, ref) -> str:
    """recrl (bf16) against recrl fp32 on the same inputs (and, for sampling, the same key)."""
    ref = np.asarray(ref)
    if op == "score":
        d = np.abs(ours - ref)
        rel = np.abs(ours.sum(1) - ref.sum(1)).max() / np.abs(ref.sum(1)).max()
        return f"|log-prob diff| max {d.max():.3f} mean {d.mean():.4f}, sums rel {rel:.1e}"
    return f"tokens equal {np.mean(ours == ref):.0%}"
