"""Evaluating models and defenses: the paper's experiments and figures, the security evaluation."""
