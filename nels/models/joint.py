"""The cross-modal joint space (filled in by the joint-space issue)."""
from __future__ import annotations


def joint_encoder_for(acoustic_encoder):
    """The joint-space encoder stacked on `acoustic_encoder`, or None when no joint model exists."""
    return None


def library_has_joint(lib) -> bool:
    return False


def search_candidates(lib, text=None, audio=None, n=100):
    return None
