"""What the simulation's fork server imports once, for every node it forks (`coopml.sim.launcher`).

Threads are pinned before torch loads (OpenMP reads its thread count when the library loads): the
nodes share two cores. Nothing here starts a thread or opens a connection, so forking is safe."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import tenseal  # noqa: F401
import torch
import torch._dynamo  # noqa: F401  -- an optimizer's first step imports it (1.6 s per node otherwise)

import coopml.cli.main
import coopml.roles.contributor
import coopml.roles.initiator
import coopml.roles.runner
import coopml.roles.verifier  # noqa: F401
