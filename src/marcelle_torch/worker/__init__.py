"""The Marcelle-backend run worker (Solution 3): see ``worker.Worker``."""
