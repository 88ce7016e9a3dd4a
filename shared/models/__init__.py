"""Models: the versioned store, import, prompting, policy evaluation, hot swaps."""
