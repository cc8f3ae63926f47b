"""vlekit.tables: one cell formatter, a text and a Markdown rendering, the metrics and ablation layouts."""
from __future__ import annotations

import pytest

from vlekit.tables import format_metrics_table, format_results_table, markdown_table, text_table

ROWS = [{"name": "a|b", "value": 0.12345, "n": 3}, {"name": "long name", "value": 1.5, "n": 12, "extra": "x\ny"}]


def test_markdown_table_rounds_floats_escapes_pipes_and_newlines_and_orders_columns():
    assert markdown_table(ROWS, digits=2).splitlines() == [
        "| name | value | n | extra |", "|---|---|---|---|",
        "| a\\|b | 0.12 | 3 |  |", "| long name | 1.50 | 12 | x y |",
    ]
    assert markdown_table(ROWS, ["n", "name"]).splitlines()[2] == "| 3 | a\\|b |"
    assert markdown_table([], ["a"]) == "| a |\n|---|"


def test_text_table_aligns_labels_left_and_numbers_right_two_spaces_apart():
    assert text_table(ROWS, ["name", "value", "n"]).splitlines() == [
        "name       value   n",
        "a|b        0.123   3",
        "long name  1.500  12",
    ]
    assert text_table(ROWS, ["name", "n"], align="ll").splitlines()[1] == "a|b        3"  # no trailing spaces
    with pytest.raises(ValueError, match="one of 'l' or 'r' per column"):
        text_table(ROWS, ["name", "n"], align="l")


def test_metrics_table_lists_tasks_in_order_in_both_renderings():
    metrics = {"q2ar": {"accuracy": 0.5, "ci95": [0.4, 0.6], "chance": 0.0625, "n": 300},
               "q2a": {"accuracy": 0.75, "ci95": [0.7, 0.8], "chance": 0.25, "n": 300}}
    assert format_metrics_table(metrics).splitlines() == [
        "metric  accuracy          95% CI  chance    n",
        "Q->A       0.750  [0.700, 0.800]  0.2500  300",
        "Q->AR      0.500  [0.400, 0.600]  0.0625  300",
    ]
    assert format_metrics_table(metrics, markdown=True).splitlines()[2] == "| Q->A | 0.750 | [0.700, 0.800] | 0.2500 | 300 |"


def test_results_table_shows_percent_and_no_spread_for_one_seed():
    rows = [{"variant": "vle", "task": "qa2r", "seeds": 1, "mean": 0.8, "std": float("nan"), "min": 0.8, "max": 0.8, "delta": 0.0,
             "train_loss": 0.5}]
    assert "| vle | 1 | 80.0 | n/a | 80.0 | 80.0 | +0.0 | 0.500 |" in format_results_table(rows, markdown=True)
    assert format_results_table(rows).splitlines()[0].startswith("variant  seeds  QA->R mean %")  # the rows' task
    assert format_results_table(rows, metric="Q->AR").splitlines()[0].startswith("variant  seeds  Q->AR mean %")
