"""Training: the sound-event CNN and the cross-modal joint space, from labelled datasets."""
