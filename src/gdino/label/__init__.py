"""Labeling folders of images into datasets (COCO, YOLO), resumably: :func:`gdino.label.folder.label_folder`."""
