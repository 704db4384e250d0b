"""Rotation vectors (axis times angle, URScript's orientation convention) and matrices.

Shared by the UR driver, which adds rotation increments to its setpoint, and the controller
emulator, which computes the tool pose the way the controller reports it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["matrix_from_rotvec", "rotvec_from_matrix"]


def rotvec_from_matrix(R: np.ndarray) -> np.ndarray:
    """Axis-angle (URScript's rotation vector) of a rotation matrix, stable near 0 and pi."""
    cos = max(-1.0, min(1.0, (np.trace(R) - 1.0) / 2.0))
    angle = math.acos(cos)
    if angle < 1e-9:
        return np.zeros(3)
    if math.pi - angle < 1e-6:
        # Near pi the antisymmetric part vanishes: take the axis from the symmetric part.
        M = (R + np.eye(3)) / 2.0
        axis = np.sqrt(np.clip(np.diag(M), 0.0, None))
        k = int(np.argmax(axis))
        for j in range(3):
            if j != k and M[k, j] < 0:
                axis[j] = -axis[j]
        return axis / np.linalg.norm(axis) * angle
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    return axis / (2.0 * math.sin(angle)) * angle


def matrix_from_rotvec(r: np.ndarray) -> np.ndarray:
    """Rotation matrix of an axis-angle vector (Rodrigues)."""
    r = np.asarray(r, dtype=np.float64)
    angle = float(np.linalg.norm(r))
    if angle < 1e-12:
        return np.eye(3)
    k = r / angle
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * (K @ K)
