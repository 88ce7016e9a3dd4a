"""The `rlhf` command: run the broker, build the demo models, start the stack, operate it."""
