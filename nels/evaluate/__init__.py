"""Measurements: classification, retrieval and the joint space, on a labelled dataset's held-out fold."""
