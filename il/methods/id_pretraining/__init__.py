"""Inverse-dynamics pretraining (Brandfonbrener, Nachum & Bruna, NeurIPS 2023): pretrain an image
encoder on other tasks' demonstrations, freeze it, and imitate a new task from a few demos.
"""
