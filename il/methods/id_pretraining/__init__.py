"""Inverse-dynamics pretraining (Brandfonbrener, Nachum & Bruna, NeurIPS 2023): pretrain an image
encoder on other tasks' demonstrations, freeze it, and imitate a new task from a few demos.

Data flow, all on the shared pieces (`WindowSampler`, `il.train.train`, policy checkpoints):

    pretraining DemoStore (many tasks, one camera)
      → `il pretrain` (pipeline.py: `pretrain`) → `il.train.train`, method `encoder-pretraining`
        (objectives.py): windows of frames (t, t+k) and the action at t → one objective's loss
      → the run folder: `checkpoints/last` is the encoder checkpoint (`policy.json` records the
        encoder, the camera and the pretraining tasks; `metrics.csv` the held-out loss
        before → after); it cannot act, so `il eval` and `il deploy` refuse it
    few-shot DemoStore (a task the encoder never saw)
      → `il fewshot --encoder RUN` (pipeline.py: `fewshot`) → `il.train.train`, method
        `pretrained-bc` (policy.py): the encoder loaded and frozen before the first step, an MLP
        head trained on `demos` episodes drawn by `seed`
      → an ordinary policy checkpoint for `il eval` and `il deploy`

`il experiment id-door` (id_door.py) runs the whole comparison; id_pretrain.yaml holds the
paper's sizes for both verbs.

The objectives, by the labels of the paper's figures:

- `id`: inverse dynamics, â_t = MLP([φ(o_t), φ(o_{t+k})]). What changes between two frames is
  caused by the action, and only the agent's own state and what it touches change, so the
  features must locate the arm and the objects — what a policy needs — and ignore the rest.
- `bc`: multitask BC, â_t = MLP(φ(o_t)) without the task: the action also depends on the
  hidden task, so the features are pushed to guess it, which does not carry to a new task.
- `fd-implicit`: InfoNCE between a projection of [φ(o_t), action embedding] and one of
  φ(o_{t+1}) (other samples of the batch are the negatives); temperature 1.
- `contrastive`: SimCLR-style InfoNCE between two random crops of the same frame; no actions.
- `fd-explicit`: a decoder reconstructs the pixels of o_{t+1} from φ(o_t) and a_t; no crop.

The transition o_t → o_{t+k} is explained by the action the env *executed*; a store recorded
with `il record --action-noise` keeps that as `executed_action` (the label `action` is the
expert's), and the dynamics objectives use it whenever it is there. BC uses the label.

The references `scratch` (the same encoder and head trained end to end on the few demos, with
random crops) and `state` (the head on the true 39-d state) go through `il fewshot` as well.
"""
