"""lookalike's service around the core: the command, the worker, the watcher."""
