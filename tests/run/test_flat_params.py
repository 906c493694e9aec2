"""One vector per dtype for a pytree of parameters (blackout_jax.run.flat_params)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blackout_jax.run.flat_params import FlatLayout


def _tree():
    rng = np.random.default_rng(0)
    return {
        "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
        "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
        "scale": jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16),
        "table": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
    }


def test_ravel_concatenates_the_leaves_of_each_dtype_in_tree_order():
    tree = _tree()
    layout = FlatLayout.of(tree)
    assert layout.sizes == {"float32": 4 + 72 + 6, "bfloat16": 5}
    vectors = layout.ravel(tree)
    assert vectors["float32"].dtype == jnp.float32 and vectors["bfloat16"].dtype == jnp.bfloat16
    float_leaves = [tree["bias"], tree["conv"]["kernel"], tree["table"]]  # jax.tree.leaves order
    np.testing.assert_array_equal(
        vectors["float32"], np.concatenate([np.ravel(leaf) for leaf in float_leaves])
    )
    np.testing.assert_array_equal(vectors["bfloat16"], tree["scale"])


def test_unravel_gives_back_the_tree_also_under_jit():
    tree = _tree()
    layout = FlatLayout.of(tree)
    back = jax.jit(layout.unravel)(layout.ravel(tree))
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(back), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_the_layout_of_abstract_leaves_equals_that_of_the_arrays():
    tree = _tree()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    assert FlatLayout.of(abstract) == FlatLayout.of(tree)
    assert hash(FlatLayout.of(abstract)) == hash(FlatLayout.of(tree))
    rebuilt = FlatLayout.of(tree).abstract_tree()
    assert jax.tree.map(lambda x: (x.shape, x.dtype), rebuilt) == jax.tree.map(
        lambda x: (x.shape, x.dtype), abstract
    )
    assert {k: v.shape for k, v in FlatLayout.of(tree).abstract().items()} == {
        "float32": (82,),
        "bfloat16": (5,),
    }


def test_a_vector_of_another_length_is_refused_naming_both_lengths():
    layout = FlatLayout.of(_tree())
    vectors = layout.ravel(_tree())
    vectors["float32"] = vectors["float32"][:-1]
    with pytest.raises(ValueError, match=r"float32 parameter vector has shape \(81,\).*\(82,\)"):
        layout.unravel(vectors)
