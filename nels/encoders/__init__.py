"""Encoders (audio -> embedding [+ class probabilities]), the text encoder, and the joint space."""
from nels.encoders.base import Encoded, Encoder, load_encoder

__all__ = ["Encoded", "Encoder", "load_encoder"]
