"""Policies: one interface for every method, so training, evaluation and deployment never
special-case one."""

from il.policies.expert import ExpertPolicy

__all__ = ["ExpertPolicy"]
