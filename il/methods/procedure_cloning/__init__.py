"""Procedure cloning (Yang, Schuurmans, Abbeel & Nachum 2022): imitate the expert's computation,
not only its answer, so what was learnt carries to situations the demonstrations never showed.

What lives here:

- `maze` — `pc-maze`: a fully convolutional BFS step model, iterated until the agent is reached.
- `maze_baselines` — `bc-maze`, `aug-bc-maze`, `aux-bc-maze`, the baselines it is compared with.
- `metaworld` — `pc-metaworld` (the scripted expert's chain: positions → phase → target →
  action) and `aux-bc-metaworld` (the same heads, unchained).
- `pc_maze`, `pc_metaworld` — `il experiment pc-maze` / `pc-metaworld`.
- `maze.yaml` — the preset every maze method trains with.

The labels it learns from are the experts' own procedures, which every expert recording
stores per step (`procedure/...`: the BFS maps of the maze expert, the parsed positions, phase,
target and grab effort of the Meta-World experts); each policy names the keys it needs
(`extra_keys`), and `il train` refuses a store without them in one line.
"""
