"""The policy-training methods: a registry (registry.py), the base every method shares
(base_config.py, base_trainer.py; sampled_config.py and sampled_trainer.py for the methods
that sample), the shared rollout, model and checkpoint helpers, then one sub-package per
family: ppo/, policy_gradient/ (RLOO, GRPO), dpo/ (DPO, KTO). Importing this package loads
no torch: trainers are imported when a method is built."""
