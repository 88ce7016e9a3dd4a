"""Data-parallel training under torchrun: the process group and collectives
(group.py), rank 0's side of the protocol (coordinator.py) and the other
ranks' loop (worker.py), and the entry point that picks one (launch.py)."""
