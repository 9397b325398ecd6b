"""The test suite. Imported before any test module or conftest, so the environment set here reaches every process
the tests start (servers, the CLI), and torch in this one, before OpenMP reads it."""

import os

# The suite runs many processes (the pytest workers, the servers and CLI runs they start) on two cores. libgomp's
# threads spin for a while after each parallel region by default, holding a core another process is waiting for;
# waiting passively cut a fresh clone's suite from 337 to 300 s here (two workers; CPU time 477 s with it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
