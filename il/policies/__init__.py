"""Policies: one interface for every method (`base`), the blocks they share (`blocks`, `text`),
the two baselines (`bc`, `diffusion`), the scripted experts behind the same interface
(`expert`), and the table of every method by name (`registry`), so training, evaluation and
deployment never special-case one.

Nothing is imported here: loading a BC checkpoint onto a real arm imports `base`, `bc` and
what they use, and neither a simulator (the experts) nor any other method."""
