"""Robot drivers: one interface for simulated and real arms, cameras and teleoperation devices.

Usable on its own: nothing here imports `il`.
"""
