"""The helpers of experiments/guidance_study.py: labels, summary over seeds, grid layout."""

from __future__ import annotations

import numpy as np

from experiments import guidance_study


def test_balanced_labels_summary_and_grid_order():
    labels = guidance_study.balanced_labels(6, 3)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    rows = [
        {"guidance_scale": 0.0, "seed": 0, "label_accuracy": 0.5, "fd_over_floor": 1.0,
         "class_entropy": 1.0},
        {"guidance_scale": 0.0, "seed": 1, "label_accuracy": 0.7, "fd_over_floor": 3.0,
         "class_entropy": 1.0},
        {"guidance_scale": "null", "seed": 0, "fd_over_floor": 2.0, "class_entropy": 0.5},
    ]  # fmt: skip
    summary = guidance_study.summarise(rows)
    assert summary[0]["guidance_scale"] == 0.0 and summary[0]["num_seeds"] == 2
    np.testing.assert_allclose(summary[0]["label_accuracy"], 0.6)
    np.testing.assert_allclose(summary[0]["fd_over_floor_sd"], np.std([1.0, 3.0], ddof=1))
    assert "label_accuracy" not in summary[1]
    table = guidance_study.markdown(summary)
    assert "| 0.0 | 0.600 ± 0.141 | 2.000 ± 1.414 | 1.000 ± 0.000 |" in table
    assert "| null | — | 2.000 ± 0.000 | 0.500 ± 0.000 |" in table
    # Two scales, samples numbered by (scale, index): row c = class c's first 2 of each scale.
    by_scale = [np.arange(6) + 100 * k for k in range(2)]
    order = guidance_study.grid_order(by_scale, labels, 2)
    assert order.tolist() == [0, 1, 100, 101, 2, 3, 102, 103, 4, 5, 104, 105]
