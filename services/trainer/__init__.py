"""The trainer: pre-training, SFT and reward-model training (shared by the
bootstrap and the online loop), and the bootstrap orchestration."""
