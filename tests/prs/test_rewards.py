"""Step rewards, path metrics, coherence and diversity against hand-computed values."""

import jax.numpy as jnp
import numpy as np

from recrl.prs import rewards
from tests.prs import fake_sim


def test_step_rewards_telescope_and_duplicates_get_no_click():
    s = fake_sim.Scores(
        logp_target=jnp.array([[-5.0, -4.0, -4.5, -2.0, -9.0]]),
        rank=jnp.array([[100, 40, 50, 3, 7]]),
        click=jnp.array([[0.9, 0.8, 0.7, 0.6]]),
    )
    path = jnp.array([[4, 6, 4, 1]])  # item 4 repeated at t = 2
    lengths = jnp.array([3])
    comps = np.asarray(rewards.step_rewards(s, path, lengths))[0]
    np.testing.assert_allclose(comps[:, 0], [1.0, -0.5, 2.5, 0.0])  # IoI steps
    np.testing.assert_allclose(comps[:, 1], [60, -10, 47, 0])  # IoR steps
    np.testing.assert_allclose(comps[:, 2], [0.9, 0.8, 0.0, 0.0])  # duplicate: CTR 0
    m = rewards.path_metrics(s, path, lengths, jnp.array([1]), jnp.eye(8))
    np.testing.assert_allclose([m.ioi[0], m.ior[0], m.ctr[0]], [3.0, 97.0, 1.7 / 3], rtol=1e-6)


def test_coherence_counts_pairs_with_the_target_appended():
    genres = jnp.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], jnp.float32)
    # path 0 -> 1 -> 2, target 3: pairs (0,1) yes, (1,2) yes, (2,3) no  => 2/3
    # path 3, target 4 (no genres): pair (3,4) no => 0
    c = rewards.coherence(jnp.array([[0, 1, 2], [3, 0, 0]]), jnp.array([3, 1]),
                          jnp.array([3, 4]), genres)
    np.testing.assert_allclose(c, [2 / 3, 0.0], rtol=1e-6)


def test_diversity_hand_case():
    # group of 3 paths: {1,2}, {1,2}, {3}; Jaccard: 1, 0, 0 (each pair counted twice)
    path = jnp.array([[[1, 2, 0], [2, 1, 0], [3, 0, 0]]])
    lengths = jnp.array([[2, 2, 1]])
    np.testing.assert_allclose(rewards.diversity(path, lengths, 5), [1 - 2 / 6], rtol=1e-6)


def test_fake_scores_against_a_direct_computation():
    table = fake_sim.make_table(6, 4, seed=1)
    hist, path = jnp.array([[0, 1]]), jnp.array([[2, 3]])
    s = fake_sim.score(table, hist, path, jnp.array([2]), jnp.array([5]))
    state = (table[0] + table[1] + table[2]) / 3
    logits = np.asarray(table @ state)
    want = logits[5] - np.log(np.exp(logits).sum())
    np.testing.assert_allclose(s.logp_target[0, 1], want, rtol=1e-5)
    assert int(s.rank[0, 1]) == 1 + int((logits > logits[5]).sum())
