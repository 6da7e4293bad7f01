"""The shared causal block: cache vs no cache, dropout sites, parameters of both users."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recrl.models import KVCache
from recrl.models.attention import CausalBlock, causal_mask, position_mask
from recrl.prs.policy import PathPolicy, PolicyConfig
from recrl.prs.simulator import SimConfig, build_simulator


def _block(**kw):
    return CausalBlock(8, 2, 16, rngs=nnx.Rngs(0), **kw)


def test_cached_chunks_equal_one_uncached_pass():
    """Prefill 3 positions, then decode 2 one at a time into a 6-slot cache: the same
    outputs as one causal pass over the 5 positions."""
    blk = _block()
    x = jax.random.normal(jax.random.key(1), (2, 5, 8))
    full, _ = blk(x, causal_mask(5))
    cache = KVCache.zeros(1, 2, 6, 2, 4)
    kv = (cache.k[0], cache.v[0])
    got, kv = blk(x[:, :3], position_mask(6, jnp.arange(3)), kv, 0)
    outs = [got]
    for pos in (3, 4):
        y, kv = blk(x[:, pos:pos + 1], position_mask(6, jnp.array([pos])), kv, pos)
        outs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(kv[0][:, 5]) == 0)  # the unused slot stays empty


def test_dropout_sites_in_order_and_eval_mode_ignores_none():
    blk = _block()
    x = jnp.ones((1, 3, 8))
    seen = []

    def record(site, y):
        seen.append(site)
        return y

    with_fn, _ = blk(x, causal_mask(3), dropout=record)
    assert seen == ["attn", "attn_out", "ffn_hidden", "ffn_out"]
    np.testing.assert_array_equal(with_fn, blk(x, causal_mask(3))[0])
    zeroed, _ = blk(x, causal_mask(3), dropout=lambda site, y: 0 * y)
    np.testing.assert_array_equal(zeroed, x)  # both residual branches dropped entirely


def test_masked_keys_get_no_weight():
    blk = _block()
    x = jax.random.normal(jax.random.key(2), (1, 4, 8))
    base, _ = blk(x, causal_mask(4))
    changed = x.at[:, 3].set(100.0)  # a later position cannot change earlier outputs
    np.testing.assert_array_equal(blk(changed, causal_mask(4))[0][:, :3], base[:, :3])


def test_both_users_build_their_parameters_from_the_block():
    pol = PathPolicy(PolicyConfig(num_items=10, history=2, max_len=3, dim=8, n_layers=2,
                                  n_heads=2, ffn_dim=16), nnx.Rngs(0))
    sas = build_simulator(SimConfig("sasrec", num_items=10, dim=8, n_layers=2, n_heads=2,
                                    ffn_dim=16))
    for model, qkv_bias, eps in ((pol, False, 1e-6), (sas, True, 1e-8)):
        assert len(model.blocks) == 2
        for blk in model.blocks:
            assert isinstance(blk, CausalBlock)
            assert (blk.qkv.bias is not None) == qkv_bias
            assert blk.norm1.epsilon == eps and blk.norm2.epsilon == eps
            names = set(nnx.state(blk, nnx.Param).keys())
            assert names == {"norm1", "qkv", "out", "norm2", "fc1", "fc2"}
    # SASRec's kernels keep their normal(0.02) initialisation
    assert float(jnp.std(sas.blocks[0].fc1.kernel[...])) == pytest.approx(0.02, rel=0.2)


def test_block_rejects_heads_that_do_not_divide_dim():
    with pytest.raises(ValueError, match="dim 8 must be divisible by n_heads 3"):
        CausalBlock(8, 3, 16, rngs=nnx.Rngs(0))


def test_prorl_models_import_without_the_lm_extra():
    """The policy's block and cache come from recrl.models without tokenizers / gguf /
    safetensors (the [prorl] extra does not install them)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tokenizers', 'gguf', 'safetensors'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from recrl.prs import policy, rollout, simulator\n"
        "from recrl import models\n"
        "print(models.KVCache.__name__)\n"
        "try:\n"
        "    models.Tokenizer\n"
        "except ImportError as e:\n"
        "    print('lm extra:', e)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("KVCache\nlm extra:")
