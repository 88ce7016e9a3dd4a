"""Reward models: formats, scoring, ensembles, ONNX export."""
