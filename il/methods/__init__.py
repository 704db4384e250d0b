"""The paper methods, one package each, on top of the shared spine (store → sampler → policy →
train / eval / deploy).

A package holds everything its method adds and nothing the spine already has: its policies,
the recorded labels it learns from, its experiment (driven by `il.experiments.runner`) and its
preset configs. A method is reachable by name only through one row of `il.policies.registry
.METHODS` (and `il.experiments.EXPERIMENTS` for its experiment), whose modules are imported on
first use: nothing imports a method it does not run.

- `procedure_cloning` — procedure cloning (Yang et al. 2022) on mazes and on Meta-World, with
  the baselines it is compared against.
- `id_pretraining` — inverse-dynamics pretraining of an image encoder (Brandfonbrener et al.
  2023) and few-shot imitation over it.
- `rth` — RT-H (Belkhale et al. 2024): a language motion predicted between the observation and
  the action, readable and overridable while the policy acts; the corrections in words, the
  fine-tune of its motion head on them and the flat IWR baseline.
"""
