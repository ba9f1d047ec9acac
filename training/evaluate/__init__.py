"""Evaluation of the enhancer on held-out phantoms (issue 4, item 5).

``python -m training evaluate --out DIR --model cascade=ckpt.safetensors:cascade ...`` runs the
baselines (rapid × dose, Gaussian, BM3D on the Anscombe transform) and every checkpoint on the
same held-out scans and writes ``DIR/report.md`` with the targets, the table, the figures and
``metrics.json``.

Modules: :mod:`~training.evaluate.heldout` (held-out phantom scans),
:mod:`~training.evaluate.metrics` (PSNR, SSIM, lesion contrast, count fidelity, Fréchet
distance; NumPy), :mod:`~training.evaluate.baselines` (the methods),
:mod:`~training.evaluate.perceptual` (FD-SAM, FID and LPIPS feature extractors, weights from
paths only), :mod:`~training.evaluate.evaluation` (the loop), :mod:`~training.evaluate.records`
(what a run produces), :mod:`~training.evaluate.report` and :mod:`~training.evaluate.figures`
(the output), :mod:`~training.evaluate.run` (the command line).
"""

from __future__ import annotations

__all__: list[str] = []
