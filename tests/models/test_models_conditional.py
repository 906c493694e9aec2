"""Class-conditional NCSN++ and classifier-free guidance through ``predict_fn``: the
unconditional network unchanged, the null-label path, the guidance formula on a stub (one call on
the doubled batch), the guided network against two separate calls, label dropout in training."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from blackout_jax import models
from tests.models.test_models_ncsnpp import MAX_COUNT, build, random_counts
from tests.run.test_train import _small_step

NUM_CLASSES = 4
NULL = NUM_CLASSES
# The smallest NCSN++ (one level, no attention): quick to build and compile.
SMALL = {
    "ch_mult": (1,),
    "attn_resolutions": (),
    "resblock_type": "ddpm",
    "fir": False,
    "progressive_input": "none",
}


def small(num_classes=0):
    return build(SMALL | {"num_classes": num_classes})


@jax.jit
def _forward(graphdef, state, counts, t, labels):
    model = nnx.merge(graphdef, state)
    return model(counts, t) if labels is None else model(counts, t, labels)


def forward(model, counts, t, labels=None):
    return _forward(*nnx.split(model), counts, t, labels)


class SmallConditionalNet(nnx.Module):
    """A convolution with a label embedding: NCSN++'s conditional call signature, fast."""

    def __init__(self) -> None:
        rngs = nnx.Rngs(0)
        self.conv = nnx.Conv(2, 1, (3, 3), rngs=rngs)
        self.embedding = nnx.Embed(NUM_CLASSES + 1, 1, rngs=rngs)

    def __call__(self, counts, t, labels, *, train=False, dropout_key=None):
        x = counts.astype(jnp.float32) / MAX_COUNT
        time_channel = jnp.broadcast_to(t[:, None, None, None] / 10.0, x.shape)
        h = self.conv(jnp.concatenate([x, time_channel], axis=-1))
        return jax.nn.softplus(h + self.embedding(labels)[:, None, None, :])


def _params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _flat(tree):
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree.leaves_with_path(tree)
    }


def _inputs(batch=3, seed=1):
    counts = random_counts((batch, 8, 8, 1), seed=seed)
    t = jnp.linspace(0.3, 4.0, batch)
    return counts, t


def test_unconditional_network_is_unchanged_and_conditional_one_only_adds_the_embedding():
    unconditional = small()
    conditional = small(NUM_CLASSES)
    assert unconditional.label_embedding is None
    plain, extended = _flat(_params(unconditional)), _flat(_params(conditional))
    added = sorted(set(extended) - set(plain))
    assert added == ["['label_embedding']['embedding']"]
    assert extended[added[0]].shape == (NUM_CLASSES + 1, 4 * 8)
    assert models.count_parameters(conditional) == models.count_parameters(unconditional) + (
        (NUM_CLASSES + 1) * 4 * 8
    )
    for name, value in plain.items():  # the other parameters draw exactly what they drew
        np.testing.assert_array_equal(extended[name], value)
    with pytest.raises(ValueError, match="unconditional network"):
        forward(unconditional, *_inputs(), jnp.zeros(3, jnp.int32))


def test_null_label_with_a_zero_embedding_is_the_unconditional_network():
    unconditional = small()
    conditional = small(NUM_CLASSES)
    table = conditional.label_embedding.embedding
    table[...] = table[...].at[NULL].set(0.0)
    counts, t = _inputs()
    expected = forward(unconditional, counts, t)
    # The two networks are different programs (one adds the zero embedding), which the
    # compiler may fuse differently: equal to float32 rounding, not bit for bit.
    same = functools.partial(np.testing.assert_allclose, desired=expected, rtol=1e-6, atol=1e-6)
    same(forward(conditional, counts, t))  # None = null
    same(forward(conditional, counts, t, jnp.full(3, NULL)))
    assert not np.allclose(forward(conditional, counts, t, jnp.zeros(3, jnp.int32)), expected)


def test_guided_prediction_is_the_formula_with_one_call_on_the_doubled_batch():
    calls = []

    def stub(counts, t, labels):
        calls.append((counts.shape, t.shape, np.asarray(labels)))
        scale = (labels.astype(jnp.float32) + 1.0)[:, None, None, None]
        return scale * (counts + 0.5) * t[:, None, None, None]

    counts = jnp.asarray(np.arange(2 * 2 * 3).reshape(2, 2, 3, 1), jnp.float32)
    t = jnp.asarray([0.5, 2.0])
    labels = jnp.asarray([0, 2])
    for w in (0.0, 1.0, 2.5):
        calls.clear()
        guided = models.guided_prediction(stub, counts, t, labels, w, null_label=NULL)
        assert len(calls) == 1
        assert calls[0][:2] == ((4, 2, 3, 1), (4,))
        np.testing.assert_array_equal(calls[0][2], [0, 2, NULL, NULL])
        base = (np.asarray(counts) + 0.5) * np.asarray(t)[:, None, None, None]
        conditional = (np.asarray(labels) + 1.0)[:, None, None, None] * base
        null = (NULL + 1.0) * base
        want = conditional ** (1.0 + w) / null**w
        np.testing.assert_allclose(guided, want, rtol=1e-5)


def test_guided_prediction_of_zeros_is_finite():
    def stub(counts, t, labels):
        return jnp.zeros_like(counts)

    guided = models.guided_prediction(
        stub, jnp.zeros((2, 1)), jnp.ones(2), jnp.zeros(2), 4.0, null_label=1
    )
    assert np.all(np.isfinite(guided)) and np.all(np.asarray(guided) < 1e-30)


def test_guided_network_matches_separate_calls_and_compiles_once_for_all_labels():
    graphdef, state = nnx.split(small(NUM_CLASSES))
    counts, t = _inputs(batch=4)
    labels = jnp.asarray([0, 1, 3, 2])
    traces = []

    @jax.jit
    def run(predict_fn, counts, t):
        traces.append(1)
        return predict_fn(counts, t)

    yhat_c = run(models.make_predict_fn(graphdef, state, labels=labels), counts, t)
    yhat_null = run(models.make_predict_fn(graphdef, state, labels=jnp.full(4, NULL)), counts, t)
    unlabelled = jax.jit(models.make_predict_fn(graphdef, state))(counts, t)
    np.testing.assert_allclose(yhat_null, unlabelled, rtol=1e-6)
    unguided = models.make_predict_fn(graphdef, state, labels=labels, guidance_scale=0.0)
    np.testing.assert_array_equal(run(unguided, counts, t), yhat_c)  # w = 0: one plain call
    traces.clear()
    for w in (0.5, 2.0):
        guided = run(
            models.make_predict_fn(graphdef, state, labels=labels, guidance_scale=w), counts, t
        )
        want = np.minimum(yhat_c ** (1.0 + w) / yhat_null**w, MAX_COUNT)
        np.testing.assert_allclose(guided, want, rtol=2e-4, atol=1e-6)
    other = models.make_predict_fn(
        graphdef, state, labels=jnp.asarray([3, 3, 0, 0]), guidance_scale=1.0
    )
    run(other, counts, t)
    assert len(traces) == 1  # labels and w are arguments, not constants


def _conditional_step(label_dropout):
    return _small_step(
        clip=1e9, net=SmallConditionalNet(), label_dropout=label_dropout, null_label=NULL
    )


def test_label_dropout_one_trains_on_null_labels_and_zero_on_the_labels():
    counts = random_counts((4, 8, 8, 1), seed=5)
    labels = jnp.asarray([0, 1, 2, 3])
    null = jnp.full(4, NULL)
    results = {}
    for dropout, runs in ((1.0, {"all_dropped": labels}), (0.0, {"null": null, "kept": labels})):
        step_fn, state, rest = _conditional_step(dropout)
        for name, given in runs.items():
            new_state, metrics = step_fn(state, rest, (counts, given))
            results[name] = (_flat(new_state.params), float(metrics["loss"]))
    step_fn, state, rest = _conditional_step(0.5)
    for name in ("half", "half_again"):
        new_state, metrics = step_fn(state, rest, (counts, labels))
        results[name] = (_flat(new_state.params), float(metrics["loss"]))
    for name, value in results["null"][0].items():
        np.testing.assert_array_equal(results["all_dropped"][0][name], value)
    assert results["kept"][1] != results["null"][1]
    assert results["half"][1] == results["half_again"][1]  # the same draws for the same step
