"""``model.inference_dtype``: evaluation mode computes in its own dtype, training is unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from blackout_jax import models

TINY = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)


@pytest.fixture(scope="module")
def trained_state():
    model = models.create_model(
        TINY, image_shape=(8, 8, 1), max_count=16, t_end=10.0, num_steps=1000, seed=3
    )
    return nnx.state(model)


def variant(state, **fields):
    """The network of ``TINY | fields`` holding the parameters in ``state``.

    The parameters do not depend on the dtypes, so any variant can hold them.
    """
    abstract = models.abstract_network(
        TINY | fields, image_shape=(8, 8, 1), max_count=16, t_end=10.0
    )
    return nnx.merge(nnx.graphdef(abstract), state)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    counts = jnp.asarray(rng.integers(0, 17, (3, 8, 8, 1)), jnp.int32)
    return counts, jnp.asarray([0.2, 1.5, 6.0], jnp.float32)


def apply(model, counts, t, train):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, c, u: nnx.merge(graphdef, s)(c, u, train=train))(state, counts, t)


def test_evaluation_computes_in_the_inference_dtype(trained_state, inputs):
    counts, t = inputs
    mixed = apply(variant(trained_state, inference_dtype="bfloat16"), counts, t, train=False)
    bf16 = apply(variant(trained_state, dtype="bfloat16"), counts, t, train=False)
    fp32 = apply(variant(trained_state), counts, t, train=False)
    assert mixed.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(mixed), np.asarray(bf16))
    assert not np.array_equal(np.asarray(mixed), np.asarray(fp32))


def test_training_keeps_the_training_dtype(trained_state, inputs):
    counts, t = inputs
    mixed = apply(variant(trained_state, inference_dtype="bfloat16"), counts, t, train=True)
    fp32 = apply(variant(trained_state), counts, t, train=True)
    np.testing.assert_array_equal(np.asarray(mixed), np.asarray(fp32))


def test_empty_means_the_training_dtype():
    assert models.parse_config(dict(dtype="bfloat16")).evaluation_dtype == "bfloat16"
    assert models.parse_config(dict(inference_dtype="bfloat16")).evaluation_dtype == "bfloat16"
    assert models.parse_config({}).evaluation_dtype == "float32"


def test_the_module_itself_is_not_changed(trained_state, inputs):
    model = variant(trained_state, inference_dtype="bfloat16")
    nnx.eval_shape(lambda m, c, t: m(c, t), model, *inputs)
    dtypes = {m.dtype for _, m in nnx.iter_modules(model) if hasattr(m, "dtype")}
    assert dtypes == {jnp.float32}


def test_bad_inference_dtype_is_named():
    with pytest.raises(ValueError, match="model.inference_dtype"):
        models.parse_config(TINY | dict(inference_dtype="float16"))
