"""Adapters that let other JAX diffusion frameworks use Blackout Diffusion's process.

They are written against those frameworks' protocols structurally (same method names and
arguments) and import only blackout_jax and JAX, so importing them needs no other package.
"""
