"""What the products share: device/dtype runtime, the official resize rule, image loading,
``Detections``, mask RLE and atomic file writing. Nothing here knows the model."""
