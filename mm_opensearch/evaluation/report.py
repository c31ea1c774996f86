"""Write an evaluation as ``report.json``, a Markdown table and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mm_opensearch.evaluation.metrics import METRICS
from mm_opensearch.evaluation.runner import EvalResult

__all__ = ["markdown_table", "p_values_line", "write_report"]


def p_values_line(result: EvalResult) -> str:
    """The paired significance tests of a result, on one line."""
    return "Paired t-test p-values (nDCG@10): " + ", ".join(f"{k} {v:.2g}" for k, v in result.p_values.items())


def markdown_table(result: EvalResult, *, baseline: str = "bm25") -> str:
    header = "| mode | " + " | ".join(METRICS) + f" | nDCG@10 vs {baseline} |\n|---|" + "---|" * (len(METRICS) + 1)
    base = result.modes.get(baseline, {}).get("ndcg@10")
    lines = [header]
    for mode, scores in result.modes.items():
        ratio = f"{scores['ndcg@10'] / base:.3f}x" if base else "-"
        lines.append(f"| {mode} | " + " | ".join(f"{scores[m]:.4f}" for m in METRICS) + f" | {ratio} |")
    lines.append("")
    lines.append(p_values_line(result))
    templates = list(result.per_template)
    if templates:
        lines += ["", "nDCG@10 per query template:", "", "| mode | " + " | ".join(templates) + " |",
                  "|---|" + "---|" * len(templates)]
        for mode in result.modes:
            row = [f"{result.per_template[t][mode]['ndcg@10']:.4f}" for t in templates]
            lines.append(f"| {mode} | " + " | ".join(row) + " |")
    tested = [t for t in templates if result.per_template_p_values.get(t)]
    comparisons = sorted({c for t in tested for c in result.per_template_p_values[t]})
    if comparisons:
        lines += ["", "Paired t-test p-values (nDCG@10) per query template:", "",
                  "| comparison | " + " | ".join(tested) + " |", "|---|" + "---|" * len(tested)]
        for c in comparisons:
            cells = [f"{result.per_template_p_values[t][c]:.2g}" if c in result.per_template_p_values[t] else "-" for t in tested]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _chart(result: EvalResult, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only when a report is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    modes = list(result.modes)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(METRICS)
    for i, metric in enumerate(METRICS):
        ax.bar([x + i * width for x in range(len(modes))], [result.modes[m][metric] for m in modes], width, label=metric)
    ax.set_xticks([x + width for x in range(len(modes))], modes, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Retrieval quality per mode")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: EvalResult, out_dir: Path, *, header: dict[str, Any]) -> Path:
    """``report.json`` (``header`` holds command, commit, model id, data), ``report.md``, ``report.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {**header, "modes": result.modes, "p_values": result.p_values,
                "per_template": result.per_template, "per_template_p_values": result.per_template_p_values,
                "seconds": result.seconds}
    (out_dir / "report.json").write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    (out_dir / "report.md").write_text(markdown_table(result))
    _chart(result, out_dir / "report.png")
    return out_dir / "report.json"
