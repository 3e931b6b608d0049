"""Benchmarks: COCO (``coco``), LVIS Fixed AP (``lvis``), ODinW (``odinw``), RefCOCO (``refcoco``).

Run a model with :class:`gdino.eval.evaluator.Evaluator` / :func:`gdino.eval.evaluator.evaluate_coco`;
score precomputed detections with :func:`gdino.eval.coco.score_coco` / :func:`gdino.eval.lvis.score_lvis`.
"""
