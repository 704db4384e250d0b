"""RT-H (Belkhale et al. 2024): action hierarchies using language.

A policy first says, in a short *language motion*, what the arm should do next ("move forward
and left", "close gripper", "stop"), then acts given the task and that phrase. The phrase is a
layer a person can read while the robot moves and replace when it is wrong: a correction
changes what the arm does without retraining how to do it.

What lives here:

- `policy` — `rth`: one observation encoder with the task's sentence embedding, a motion head
  (a distribution over the store's phrases) and an action head conditioned on the phrase's
  sentence embedding, either BC's MLP regression or Diffusion Policy's U-Net.
- `rth.yaml` — the preset `il train --policy rth` starts from (BC action head, from state);
  `rth_diffusion.yaml` extends it with the denoising action head.
- `corrections` — the simulated person of the paper's protocol, as `il eval --intervene`
  interveners: `expert-motion` corrects an `rth` policy in words, `expert-takeover` has the
  expert's actions replace a flat policy's.
- `intervene` — `rth-intervene`: fine-tunes an `rth` checkpoint's motion head alone on recorded
  corrections (`il finetune`; preset `rth_intervene.yaml`).
- `iwr` — `flat-iwr`: the flat baseline, a BC checkpoint fine-tuned on takeovers with
  intervention-weighted regression (preset `flat_iwr.yaml`).
- `rth_experiment` — `il experiment rth`: RT-H against flat BC with the same backbone.

The labels it learns from are per-step indices `language_motion` into the store's attrs
`source.language_motion_vocabulary`, derived from the hand's own motion
(`envs.language_motion`): every Meta-World expert recording holds them, and `il relabel STORE`
adds them to a store that lacks them.
"""
