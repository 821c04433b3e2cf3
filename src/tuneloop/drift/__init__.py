"""Drift detection: has the traffic (prompts, scores) moved away from a reference period?"""
