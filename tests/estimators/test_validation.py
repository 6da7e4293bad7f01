"""Argument validation of the estimators: chex shape checks at the public entry, once.

The same checks must hold with and without ``jit`` (chex runs them at trace time), so these
tests use chex's variants instead of calling ``jax.jit`` by hand.
"""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from recrl import estimators as est
from tests.estimators import reference as ref


class ShapeChecksTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_step_estimators_reject_mismatched_masks(self):
        fn = self.variant(est.psae_advantages)
        with pytest.raises(ValueError, match="`step_rewards`, `item_mask`, `eos_mask` must "
                                             "have one shape"):
            fn(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 4)), jnp.ones((2, 3, 5)))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("psae", "psae_loo", "reinforce", "rtg", "grpo", "drgrpo", "rloo")
    def test_registered_estimators_reject_rank_one_rewards(self, name):
        fn = self.variant(est.get_advantage_estimator(name))
        with pytest.raises(ValueError, match="`step_rewards` must have shape \\[..., G, T\\]"):
            fn(jnp.ones(4), jnp.ones(4), jnp.ones(4))

    @chex.variants(with_jit=True, without_jit=True)
    def test_losses_and_weights_name_their_arguments(self):
        loss = self.variant(lambda a, b, c: est.policy_gradient_loss(a, b, c))
        with pytest.raises(ValueError, match="`logp`, `advantages`, `mask` must have one shape"):
            loss(jnp.ones((2, 3)), jnp.ones((2, 4)), jnp.ones((2, 3)))
        weights = self.variant(lambda e, v: est.evidence_gain_weights(e, 1.0, v))
        with pytest.raises(ValueError, match="`eg`, `valid` must have one shape"):
            weights(jnp.ones((2, 3)), jnp.ones((2, 2)))
        center = self.variant(est.center_rewards)
        with pytest.raises(ValueError, match="`std` must have shape \\[C\\] = \\(3,\\)"):
            center(jnp.ones((2, 3)), jnp.zeros(3), jnp.ones(2))

    @chex.variants(with_jit=True, without_jit=True)
    def test_psae_matches_loop_with_and_without_jit(self):
        rng = np.random.default_rng(7)
        r = rng.normal(size=(3, 5, 4)).astype(np.float32)
        lengths = rng.integers(0, 5, size=(3, 5))
        item, eos = (m.astype(np.float32) for m in ref.lengths_to_masks(lengths, 4))
        got = self.variant(lambda a, b, c: est.psae_advantages(a, b, c, 0.9))(r, item, eos)
        np.testing.assert_allclose(got, ref.psae(r, lengths, 0.9), rtol=1e-5, atol=1e-5)


def _count_checks(monkeypatch, target):
    """Counts the chex shape assertions that receive ``target`` (by identity)."""
    seen = []
    for name in ("assert_shape", "assert_equal_shape"):
        original = getattr(chex, name)

        def counting(inputs, *args, _original=original, **kwargs):
            group = inputs if isinstance(inputs, list) else [inputs]
            seen.extend(1 for x in group if x is target)
            return _original(inputs, *args, **kwargs)

        monkeypatch.setattr(chex, name, counting)
    return seen


@pytest.mark.parametrize("call", [
    lambda r, i, e: est.psae_advantages(r, i, e),
    lambda r, i, e: est.psae_advantages(r, i, e, leave_one_out=True),
    lambda r, i, e: est.get_advantage_estimator("grpo")(r, i, e),
])
def test_each_argument_is_checked_once(monkeypatch, call):
    """A public estimator validates at its entry and calls unchecked cores: the rewards go
    through one rank check and one same-shape check, not one per nested public call."""
    r = jnp.ones((2, 3, 4))
    item, eos = est.path_masks(jnp.full((2, 3), 2), 4)
    seen = _count_checks(monkeypatch, r)
    call(r, item, eos)
    assert len(seen) == 2


def test_evidence_weighted_advantages_checks_log_weight_once(monkeypatch):
    ell = jnp.zeros((2, 4))
    seen = _count_checks(monkeypatch, ell)
    est.evidence_weighted_advantages(jnp.ones((2, 4)), ell)
    assert len(seen) == 2  # its rank, and one shape with `reward`
