"""Images to faces: decoding (images), detection and alignment (detect, mtcnn), the worker pool (workers)."""
