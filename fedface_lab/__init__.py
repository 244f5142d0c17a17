"""Operator and research tools: pretraining, embedding, evaluation."""
