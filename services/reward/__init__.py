"""Reward service: scores (prompt, response) pairs with the current reward version."""
