"""Does scanning identical residual blocks, or rematerialising them, cut the network's kernels and
compile time without changing its outputs?

    python -m experiments.benchmarks.scan_remat [--config cifar10|digits] [--batch B]
        [--level L] [--blocks N] [--variants unrolled,scanned,remat,network,network_remat]
        [--calls 5] [--json]

For the NCSN++ of ``configs/<config>.py`` it measures ``jax.value_and_grad`` of the sum of the
outputs, ``loss = sum(f(x))``, with respect to the parameters, for

* ``unrolled``: ``N`` identical residual blocks (``layers.ResnetBlockBigGAN`` or
  ``ResnetBlockDDPM`` of ``C = nf * ch_mult[L]`` channels in and out, on ``H / 2**L`` maps,
  dropout on) applied in a Python loop, each with its own parameter arrays, as the network
  applies the blocks of one level;
* ``scanned``: the same blocks, their parameters stacked along a new leading axis
  ``(N, ...)``, applied by ``jax.lax.scan`` over ``nnx.merge(graphdef, parameters[i])``;
* ``remat``: ``unrolled`` with ``nnx.remat`` (``jax.checkpoint``) around each block;
* ``network``: the whole network, ``sum(model(n_t, t, train=True))``;
* ``network_remat``: the whole network with ``nnx.remat`` around every residual block (a
  subclass of the block that only wraps its call; the parameter tree is unchanged).

Each variant runs in its own process (compilations in one process disturb each other). Per
variant: the kernels of the optimised program (every instruction of the entry computation and of
the ``while`` bodies it runs that launches work, :func:`program_kernels`), the launches per call
(a loop body counted once per trip), trace+lower and compile seconds, and the median of
``--calls`` calls after a warm-up. Loss, outputs and gradients of ``scanned`` and ``remat`` are
checked against ``unrolled`` (``network_remat`` against ``network``) with ``np.allclose`` and
their largest absolute difference printed; zero-initialised layers get small random weights
first (:func:`fill_zero_leaves`) so that no gradient is zero by construction. Then the
projection: which residual blocks of the whole network form runs of identical consecutive
blocks that one scan could apply, and what scanning them all would save at the measured
per-block figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from blackout_jax.models import layers, ncsnpp
from blackout_jax.run import config as config_lib
from configs import cifar10, digits
from experiments.benchmarks import common

CONFIGS = {"digits": (digits.get_config, (8, 8, 1)), "cifar10": (cifar10.get_config, (32, 32, 3))}
DEFAULT_BATCH = {"digits": 32, "cifar10": 8}
BLOCK_VARIANTS = ("unrolled", "scanned", "remat")
NETWORK_VARIANTS = ("network", "network_remat")
REFERENCE = {"scanned": "unrolled", "remat": "unrolled", "network_remat": "network"}
CONTROL_OPS = frozenset({"while", "conditional", "call"})
_FIGURES = "figures: "


# --------------------------------------------------------------------------------------------
# Kernels of an optimised program, loops included
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Instruction:
    opcode: str
    called: tuple[str, ...]  # body/condition/branch computations run by a control instruction
    trips: int  # known trip count of a while (1 otherwise)


def _opcode(line: str) -> str | None:
    """The opcode of an HLO instruction line ``%name = TYPE opcode(...)``, where ``TYPE`` may
    be a (nested) tuple with spaces; ``None`` for other lines."""
    head = re.match(r"\s*(?:ROOT\s+)?%[\w.-]+\s*=\s*", line)
    if not head:
        return None
    rest = line[head.end() :]
    if rest.startswith("("):
        depth = 0
        for index, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                rest = rest[index + 1 :]
                break
    else:
        rest = rest.split(" ", 1)[1] if " " in rest else ""
    match = re.match(r"\s*([\w-]+)\(", rest)
    return match.group(1) if match else None


def _parse_computations(text: str) -> tuple[str, dict[str, list[_Instruction]]]:
    """The entry computation's name and every computation's instructions of an HLO module."""
    computations: dict[str, list[_Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        header = re.match(r"^(ENTRY )?%(\S+) \(.*\{\s*$", line)
        if header:
            current = computations.setdefault(header.group(2), [])
            entry = header.group(2) if header.group(1) else entry
            continue
        if line.startswith("}"):
            current = None
            continue
        opcode = _opcode(line) if current is not None else None
        if opcode is None:
            continue
        called = re.findall(r"(?:condition|body|to_apply)=%([\w.-]+)", line)
        branches = re.search(r"branch_computations=\{([^}]*)\}", line)
        if branches:
            called += [name.strip().lstrip("%") for name in branches.group(1).split(",")]
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
        current.append(_Instruction(opcode, tuple(called), int(trips.group(1)) if trips else 1))
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return entry, computations


def program_kernels(compiled: Any) -> tuple[int, int]:
    """``(kernels, launches)`` of a compiled program.

    ``kernels``: instructions that launch work (not in :data:`common.NOT_KERNELS`, not
    ``while``/``conditional``/``call`` themselves) in the entry computation and in every
    computation a control instruction runs, each counted once: the size of the program XLA
    compiles. ``launches``: the same instructions counted as often as one call runs them, a
    ``while`` body ``known_trip_count`` times (once when XLA does not know the count). Without
    loops the two are equal and equal to :func:`common.hlo_op_counts`'s kernel count.
    """
    entry, computations = _parse_computations(compiled.as_text())

    def walk(name: str) -> tuple[int, int]:
        kernels = launches = 0
        for instruction in computations.get(name, []):
            if instruction.opcode in CONTROL_OPS:
                for callee in instruction.called:
                    inner_kernels, inner_launches = walk(callee)
                    kernels += inner_kernels
                    launches += instruction.trips * inner_launches
            elif instruction.opcode not in common.NOT_KERNELS:
                kernels += 1
                launches += 1
        return kernels, launches

    return walk(entry)


# --------------------------------------------------------------------------------------------
# The programs measured
# --------------------------------------------------------------------------------------------


def _model_config(config_name: str) -> tuple[Any, tuple[int, int, int]]:
    """The parsed experiment config of ``configs/<config_name>.py`` and its image shape."""
    get_config, image_shape = CONFIGS[config_name]
    return config_lib.parse(get_config()), image_shape


def make_blocks(
    model: ncsnpp.NCSNppConfig, level: int, count: int, seed: int = 0
) -> list[nnx.Module]:
    """``count`` residual blocks of the network's type, ``C -> C`` channels with
    ``C = nf * ch_mult[level]``, built as the network builds its blocks (float32 parameters)."""
    channels = model.nf * model.ch_mult[level]
    dtype = ncsnpp.COMPUTE_DTYPES[model.dtype]
    rngs = nnx.Rngs(params=seed)
    shared = dict(
        temb_dim=4 * model.nf,
        act=layers.ACTIVATIONS[model.nonlinearity],
        dropout_rate=model.dropout,
        skip_rescale=model.skip_rescale,
        init_scale=model.init_scale,
        conv_size=model.conv_size,
        dtype=dtype,
        rngs=rngs,
    )
    if model.resblock_type == "biggan":
        return [
            layers.ResnetBlockBigGAN(
                channels, channels, fir=model.fir, fir_kernel=model.fir_kernel, **shared
            )
            for _ in range(count)
        ]
    return [layers.ResnetBlockDDPM(channels, channels, **shared) for _ in range(count)]


def fill_zero_leaves(params: Any, seed: int) -> Any:
    """``params`` with every all-zero leaf replaced by normal draws of standard deviation 0.02
    (seeded): the zero-initialised last layers (``init_scale = 0``) would otherwise leave every
    gradient before them exactly zero, and the equality check blind to them."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    filled = [
        0.02 * jax.random.normal(key, leaf.shape, leaf.dtype) if not jnp.any(leaf) else leaf
        for key, leaf in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, filled)


def stack_states(states: list[Any]) -> Any:
    """One state with every leaf of ``states`` stacked along a new leading axis ``(N, ...)``."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def apply_unrolled(
    graphdef: Any,
    states: list[Any],
    x: jax.Array,
    temb: jax.Array,
    keys: jax.Array,
    *,
    remat: bool = False,
) -> jax.Array:
    """``h <- block_i(h, temb, keys[i])`` for each block state in turn (a Python loop); ``x``
    ``(B, H, W, C)``, ``temb`` ``(B, 4 nf)``, ``keys`` ``(N,)``; returns ``(B, H, W, C)``."""
    h = x
    for index, state in enumerate(states):
        block = nnx.merge(graphdef, state)
        if remat:
            h = nnx.remat(lambda module, h, key: module(h, temb, key))(block, h, keys[index])
        else:
            h = block(h, temb, keys[index])
    return h


def apply_scanned(
    graphdef: Any, stacked: Any, x: jax.Array, temb: jax.Array, keys: jax.Array
) -> jax.Array:
    """The same recursion as :func:`apply_unrolled` by ``jax.lax.scan`` over stacked states."""

    def body(h, inputs):
        state, key = inputs
        return nnx.merge(graphdef, state)(h, temb, key), None

    h, _ = jax.lax.scan(body, x, (stacked, keys))
    return h


class _RematBigGAN(layers.ResnetBlockBigGAN):
    """The BigGAN block with its call rematerialised in the backward pass."""

    def __call__(self, x, temb=None, dropout_key=None):
        return nnx.remat(layers.ResnetBlockBigGAN.__call__)(self, x, temb, dropout_key)


class _RematDDPM(layers.ResnetBlockDDPM):
    """The DDPM block with its call rematerialised in the backward pass."""

    def __call__(self, x, temb=None, dropout_key=None):
        return nnx.remat(layers.ResnetBlockDDPM.__call__)(self, x, temb, dropout_key)


def rematerialise_blocks(model: nnx.Module) -> int:
    """Make every residual block of ``model`` a remat subclass in place (same attributes, same
    parameter tree); return how many blocks changed."""
    remat_class = {layers.ResnetBlockBigGAN: _RematBigGAN, layers.ResnetBlockDDPM: _RematDDPM}
    changed = 0
    for _, node in nnx.iter_graph(model):
        if type(node) in remat_class:
            object.__setattr__(node, "__class__", remat_class[type(node)])
            changed += 1
    return changed


def block_program(args: argparse.Namespace) -> tuple[Callable, tuple[Any, ...], Callable]:
    """``(function, arguments, gradients_as_stacked)`` for a block variant."""
    model = _model_config(args.config)[0].model
    height = CONFIGS[args.config][1][0] // 2**args.level
    blocks = make_blocks(model, args.level, args.blocks)
    graphdef = nnx.graphdef(blocks[0])
    states = [
        fill_zero_leaves(nnx.state(block, nnx.Param), seed) for seed, block in enumerate(blocks)
    ]
    channels = model.nf * model.ch_mult[args.level]
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((args.batch, height, height, channels)), jnp.float32)
    temb = jnp.asarray(rng.standard_normal((args.batch, 4 * model.nf)), jnp.float32)
    keys = jax.random.split(jax.random.key(2), args.blocks)

    if args.variant == "scanned":

        def run(params):
            return apply_scanned(graphdef, params, x, temb, keys)

        params = stack_states(states)
    else:
        remat = args.variant == "remat"

        def run(params):
            return apply_unrolled(graphdef, params, x, temb, keys, remat=remat)

        params = states

    def loss_and_grad(params):
        def loss(params):
            outputs = run(params)
            return jnp.sum(outputs.astype(jnp.float32)), outputs

        return jax.value_and_grad(loss, has_aux=True)(params)

    def stacked_gradients(grads):
        return grads if args.variant == "scanned" else stack_states(grads)

    return loss_and_grad, (params,), stacked_gradients


def network_program(args: argparse.Namespace) -> tuple[Callable, tuple[Any, ...], Callable]:
    """``(function, arguments, gradients_as_is)`` for a whole-network variant."""
    config, image_shape = _model_config(args.config)
    model = ncsnpp.create_model(
        config.model,
        image_shape=image_shape,
        max_count=config.data.max_count,
        t_end=config.diffusion.t_end,
        num_steps=config.diffusion.num_steps,
        seed=0,
    )
    if args.variant == "network_remat":
        changed = rematerialise_blocks(model)
        if changed != model.num_resnet_blocks:
            raise AssertionError(f"{changed} of {model.num_resnet_blocks} blocks rematerialised")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = fill_zero_leaves(params, seed=0)
    counts = common.random_counts((args.batch, *image_shape), config.data.max_count)
    t = jnp.linspace(0.1, config.diffusion.t_end, args.batch, dtype=jnp.float32)
    dropout_key = jax.random.key(3)

    def loss_and_grad(params, rest):
        def loss(params):
            network = nnx.merge(graphdef, params, rest)
            outputs = network(counts, t, train=True, dropout_key=dropout_key)
            return jnp.sum(outputs), outputs

        return jax.value_and_grad(loss, has_aux=True)(params)

    return loss_and_grad, (params, rest), lambda grads: grads


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Compile and time one variant; save its loss, outputs and gradients to ``args.out``."""
    build = network_program if args.variant in NETWORK_VARIANTS else block_program
    function, arguments, canonical = build(args)
    jitted = jax.jit(function)
    start = time.perf_counter()
    lowered = jitted.lower(*arguments)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    kernels, launches = program_kernels(compiled)
    (loss, outputs), grads = jax.block_until_ready(compiled(*arguments))
    times = []
    for _ in range(args.calls):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*arguments))
        times.append(time.perf_counter() - start)
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(canonical(grads))]
    np.savez(args.out, *leaves, loss=np.asarray(loss), outputs=np.asarray(outputs))
    return {
        "kernels": kernels,
        "launches": launches,
        "lower_s": round(lower_s, 2),
        "compile_s": round(compile_s, 2),
        "ms": round(1000 * statistics.median(times), 1) if times else float("nan"),
        "bytes": common.program_bytes(compiled),
    }


# --------------------------------------------------------------------------------------------
# Equality against the reference variant
# --------------------------------------------------------------------------------------------


def max_differences(path: str, reference: str) -> dict[str, float]:
    """Largest absolute differences of loss, outputs and gradients of two saved variants, and the
    gradients' largest difference relative to the reference's largest gradient entry.

    Raises ``AssertionError`` when an array is not ``np.allclose`` to the reference's (``rtol``
    1e-4, ``atol`` 1e-5 times the largest magnitude of its kind: loss, outputs, all gradients)
    or the saved arrays differ in number or shape.
    """
    with np.load(path) as got, np.load(reference) as want:
        if sorted(got.files) != sorted(want.files):
            raise AssertionError(f"{path}: {len(got.files)} arrays, reference {len(want.files)}")
        arrays = {
            name: (got[name].astype(np.float64), want[name].astype(np.float64))
            for name in want.files
        }
    kinds = {name: name if name in ("loss", "outputs") else "gradients" for name in arrays}
    scale = dict.fromkeys(kinds.values(), 1e-30)
    for name, (_, b) in arrays.items():
        if b.size:
            scale[kinds[name]] = max(scale[kinds[name]], float(np.max(np.abs(b))))
    worst = {"loss": 0.0, "outputs": 0.0, "gradients": 0.0}
    for name, (a, b) in arrays.items():
        if a.shape != b.shape:
            raise AssertionError(f"{path}: array {name} has shape {a.shape}, want {b.shape}")
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        if not np.allclose(a, b, rtol=1e-4, atol=1e-5 * scale[kinds[name]]):
            raise AssertionError(
                f"{path}: {name} differs by {diff:.3g} (largest {kinds[name]} entry "
                f"{scale[kinds[name]]:.3g})"
            )
        worst[kinds[name]] = max(worst[kinds[name]], diff)
    worst["gradients_relative"] = worst["gradients"] / scale["gradients"]
    return worst


# --------------------------------------------------------------------------------------------
# The projection onto the whole network
# --------------------------------------------------------------------------------------------


def block_signatures(model_config: Any, image_shape: tuple[int, int, int]) -> list[list[tuple]]:
    """The residual blocks of the network in call order, grouped by where one scan could run:
    per level of each path, ``(in_channels, out_channels, height, attention_after)`` of each
    block (read from the abstract network; the resampling blocks and the bottleneck are left
    out, they are single)."""
    network = ncsnpp.abstract_network(model_config, image_shape=image_shape)
    groups = []
    height = image_shape[0]
    for level, modules in enumerate(network.down_levels):
        attend = len(modules.attentions) > 0
        groups.append(
            [
                (*block.conv_0.kernel.shape[2:], height // 2**level, attend)
                for block in modules.blocks
            ]
        )
    levels = len(network.up_levels)
    for index, modules in enumerate(network.up_levels):
        level = levels - 1 - index
        groups.append(
            [
                (*block.conv_0.kernel.shape[2:], height // 2**level, False)
                for block in modules.blocks
            ]
        )
    return groups


def scannable_runs(groups: list[list[tuple]]) -> list[tuple[tuple, int]]:
    """Maximal runs of equal consecutive signatures in each group, ``(signature, length)``."""
    runs = []
    for group in groups:
        for signature in group:
            if runs and runs[-1][2] is group and runs[-1][0] == signature:
                runs[-1][1] += 1
            else:
                runs.append([signature, 1, group])
    return [(signature, length) for signature, length, _ in runs]


def projection(
    config_name: str, figures: dict[str, dict[str, Any]], blocks: int
) -> tuple[list[str], dict[str, Any]]:
    """What scanning every run of identical blocks of the network would save, from the
    measured ``unrolled`` and ``scanned`` figures of ``blocks`` blocks: per block saved,
    ``(X_unrolled - X_scanned) / (blocks - 1)``."""
    config, image_shape = _model_config(config_name)
    runs = scannable_runs(block_signatures(config.model, image_shape))
    total_blocks = sum(length for _, length in runs)
    in_runs = sum(length for _, length in runs if length > 1)
    removable = sum(length - 1 for _, length in runs if length > 1)
    lines = [
        f"residual blocks of the levels: {total_blocks} (+ resampling and bottleneck blocks); "
        f"runs (in, out, height, attention): "
        + ", ".join(f"{length}x{signature}" for signature, length in runs),
        f"blocks in runs of 2 or more: {in_runs}; copies a scan per run removes: {removable}",
    ]
    summary: dict[str, Any] = {"blocks_in_runs": in_runs, "copies_removed": removable}
    unrolled, scanned = figures.get("unrolled"), figures.get("scanned")
    if unrolled and scanned and blocks > 1:
        per_block = unrolled["kernels"] / blocks
        saved_kernels = (unrolled["kernels"] - scanned["kernels"]) / (blocks - 1)
        saved_compile = (unrolled["compile_s"] - scanned["compile_s"]) / (blocks - 1)
        summary.update(
            kernels_per_block=round(per_block, 1),
            kernels_saved=round(removable * saved_kernels),
            compile_s_saved=round(removable * saved_compile, 1),
        )
        lines.append(
            f"measured: {per_block:.0f} kernels per block (forward+backward); a scan saves "
            f"{saved_kernels:.0f} kernels and {saved_compile:.2f} s of compile per copy removed; "
            f"all runs scanned: {removable * saved_kernels:.0f} kernels, "
            f"{removable * saved_compile:.1f} s of compile"
        )
        network = figures.get("network")
        if network:
            share = in_runs * per_block / network["kernels"]
            saved = removable * saved_kernels / network["kernels"]
            compile_saved = removable * saved_compile / network["compile_s"]
            summary.update(share_in_runs=round(share, 3), share_saved=round(saved, 3))
            summary.update(compile_share_saved=round(compile_saved, 3))
            lines.append(
                f"of the network's {network['kernels']} kernels about {share:.0%} are in runs; "
                f"scanning all runs would remove about {saved:.0%} of the kernels and "
                f"{compile_saved:.0%} of its {network['compile_s']:.1f} s compile"
            )
    return lines, summary


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def run_child(args: argparse.Namespace, variant: str, out: str) -> dict[str, Any]:
    """Measure ``variant`` in a new process; return its figures, echoing its other output."""
    command = [sys.executable, "-m", "experiments.benchmarks.scan_remat", "--child"]
    command += [f"--config={args.config}", f"--batch={args.batch}", f"--level={args.level}"]
    command += [f"--blocks={args.blocks}", f"--calls={args.calls}", f"--variant={variant}"]
    command += [f"--out={out}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"variant {variant} failed:\n{result.stderr[-3000:]}")
    figures: dict[str, Any] = {}
    for line in result.stdout.splitlines():
        if line.startswith(_FIGURES):
            figures = json.loads(line[len(_FIGURES) :])
        else:
            print(line, flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cifar10")
    parser.add_argument("--batch", type=int, default=0, help="0: 8 (cifar10), 32 (digits)")
    parser.add_argument("--level", type=int, default=0, help="level whose blocks are measured")
    parser.add_argument("--blocks", type=int, default=0, help="0: max(2, num_res_blocks)")
    parser.add_argument("--variants", default=",".join(BLOCK_VARIANTS + NETWORK_VARIANTS))
    parser.add_argument(
        "--calls", type=int, default=5, help="timed calls per variant (0: compile only)"
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    config, _ = _model_config(args.config)
    args.batch = args.batch or DEFAULT_BATCH[args.config]
    args.blocks = args.blocks or max(2, config.model.num_res_blocks)
    if not 0 <= args.level < len(config.model.ch_mult):
        parser.error(f"--level {args.level}: the network has {len(config.model.ch_mult)} levels")
    if args.child:
        print(_FIGURES + json.dumps(measure(args)), flush=True)
        return
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    for name in variants:
        if name not in BLOCK_VARIANTS + NETWORK_VARIANTS:
            parser.error(f"--variants: unknown variant {name!r}")
    channels = config.model.nf * config.model.ch_mult[args.level]
    height = CONFIGS[args.config][1][0] // 2**args.level
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, load {os.getloadavg()[0]:.1f}")
    print(
        f"blocks: {args.blocks} x {config.model.resblock_type} {channels}->{channels} on "
        f"{height}x{height}, batch {args.batch}; network: {args.config} NCSN++, batch {args.batch}"
    )
    print(
        "| variant | kernels | launches per call | trace+lower s | compile s | ms per call "
        "(median) | max abs diff (loss, outputs, gradients; gradients relative) |"
    )
    print("|---|---|---|---|---|---|---|", flush=True)
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="scan_remat_") as folder:
        for variant in variants:
            out = os.path.join(folder, f"{variant}.npz")
            result = run_child(args, variant, out)
            reference = REFERENCE.get(variant)
            difference = ""
            if reference in figures:
                worst = max_differences(out, os.path.join(folder, f"{reference}.npz"))
                result["max_diff"] = worst
                difference = (
                    f"{worst['loss']:.2g}, {worst['outputs']:.2g}, {worst['gradients']:.2g}; "
                    f"{worst['gradients_relative']:.2g} (vs {reference})"
                )
            figures[variant] = result
            print(
                f"| {variant} | {result['kernels']} | {result['launches']} | "
                f"{result['lower_s']:.2f} | {result['compile_s']:.2f} | {result['ms']:.1f} | "
                f"{difference} |",
                flush=True,
            )
    lines, summary = projection(args.config, figures, args.blocks)
    for line in lines:
        print(line)
    if args.json:
        summary.update(config=args.config, batch=args.batch, level=args.level, blocks=args.blocks)
        summary.update(variants=figures, jax=jax.__version__, load=os.getloadavg()[0])
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
