"""Audio: decode anything FFmpeg reads to 16 kHz mono float32, segment it, and compute log-mels."""
from nels.audio.decode import decode, stream, probe_duration
from nels.audio.segment import Segment, segments, SegmentConfig
from nels.audio.features import logmel, FeatureConfig

__all__ = ["decode", "stream", "probe_duration", "Segment", "segments", "SegmentConfig", "logmel",
           "FeatureConfig"]
