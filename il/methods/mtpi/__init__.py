"""MT-π (Ren et al. 2025): policies whose actions are motion tracks — where five points of the
gripper (or of a person's hand) will be in each of two camera images over the next steps — so
that one policy learns from robot demonstrations and from videos of a hand together.

What lives here so far:

- `lift` — inference from predicted tracks to a command: outlier clean-up, DLT, Kabsch to an
  end-effector target, gripper hysteresis across the two views.
- `retarget` — the keypoint retargeting network: a small MLP trained on human keypoints alone
  to map any five-point configuration (a hand tracker's noisy one, or a robot's gripper) onto
  the geometry of a hand, applied to every sample's conditioning keypoints so that robot and
  human samples look alike to the policy.

The data it learns from are the stores' motion tracks (`envs.tracks`: `track/<camera>`,
`track/grasp`), recorded by the expert, by robot sessions with calibrated cameras, and as
human-proxy videos (`il record --source human-proxy`, episodes of source `human`). The policy
`mtpi` itself is still to come (README, "Not here yet").
"""
