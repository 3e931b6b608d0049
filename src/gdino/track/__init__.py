"""Text-prompted multi-object tracking in video (``gdino track``)."""
