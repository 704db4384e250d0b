"""il: robot imitation learning end to end — record, store, train, evaluate, deploy, fine-tune."""

__version__ = "0.1.0"
