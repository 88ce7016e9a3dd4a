"""The rlhf-loop services, one package each (``python -m services.<name>``)."""
