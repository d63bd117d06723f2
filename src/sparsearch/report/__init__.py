"""The report of a `sparsearch run`: reads only the run directory (`results.json`, `search/*/`), writes
`report/report.md`, `report/index.html` and the PNG plots beside them."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..models.genotypes import Genotype
from .plots import accuracy_vs_sparsity, alpha_heatmap, cell_diagram

COLUMNS = [("method", "cell from"), ("search", "search"), ("sparsity", "sparsity"), ("test_acc", "test acc"), ("dense_test_acc", "dense acc"),
           ("params_nonzero", "params (nonzero)"), ("params", "params (dense)"), ("macs_effective", "MACs (effective)"),
           ("macs", "MACs (dense)"), ("search_seconds", "search s"), ("train_seconds", "prune+finetune s")]


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key.endswith("acc"):
        return f"{100 * value:.2f}%"
    if key == "sparsity":
        return f"{100 * value:g}%"
    if key.endswith("seconds"):
        return f"{value:.0f}"
    if isinstance(value, int):
        return f"{value / 1e6:.3f}M" if value >= 100_000 else f"{value:,}"
    return str(value)


def table_rows(results: dict) -> list[list[str]]:
    return [[_fmt(k, r.get(k)) for k, _ in COLUMNS] for r in results["rows"]]


def _plots(run_dir: Path, out: Path, results: dict) -> list[tuple[str, str]]:
    """Write every plot; return (file name, caption) pairs."""
    made = []
    accuracy_vs_sparsity(results["rows"], out / "accuracy_vs_sparsity.png", f"{results['dataset']}: accuracy after HYDRA")
    made.append(("accuracy_vs_sparsity.png", "Test accuracy of each searched cell after HYDRA pruning"))
    for key in results["searches"]:  # a search's key is its folder under search/
        search_dir, tag = run_dir / "search" / key, key.replace("/", "_")
        alphas = (search_dir / "alphas.jsonl").read_text().splitlines() if (search_dir / "alphas.jsonl").exists() else []
        if alphas:
            last = json.loads(alphas[-1])
            alpha_heatmap(last["normal"], last["reduce"], out / f"alphas_{tag}.png", f"{key}: softmax(alpha), last epoch")
            made.append((f"alphas_{tag}.png", f"{key}: architecture weights at the end of the search"))
        genotype = Genotype.from_dict(json.loads((search_dir / "genotype.json").read_text()))
        for cell in ("normal", "reduce"):
            cell_diagram(genotype, cell, out / f"cell_{tag}_{cell}.png", f"{key}: {cell} cell")
            made.append((f"cell_{tag}_{cell}.png", f"{key}: {cell} cell"))
    return made


def _verdict_words(search: dict) -> str:
    v = search.get("verdict")
    return f"the search {v['words']}" if v else "a sampled cell (no architecture weights to judge)"


def no_evidence(searches: dict) -> str | None:
    """The warning a report opens with when a differentiable search did not move: its rows rank nothing."""
    still = [m for m, s in searches.items() if s.get("verdict") and not s["verdict"]["moved"]]
    if not still:
        return None
    return (f"The {' and '.join(still)} search{'es' if len(still) > 1 else ''} did not move away from uniform "
            f"architecture weights: {'their cells are' if len(still) > 1 else 'its cell is'} noise, so the rows below "
            "do not rank the methods. Give the search a larger budget (see Searches) before reading them as a finding.")


def seed_table(results: dict) -> list[str]:
    """Markdown lines: mean +- std over search seeds per (method, sparsity); none with a single seed."""
    groups = results.get("by_seed") or []
    if not any(g["n"] > 1 for g in groups):
        return []
    lines = [f"Over search seeds {results.get('search_seeds')}:", "",
             "| cell from | sparsity | test acc (mean ± std) | min-max | seeds |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {g['method']} | {100 * g['sparsity']:g}% | {100 * g['acc_mean']:.2f} ± {100 * g['acc_std']:.2f}% | "
              f"{100 * g['acc_min']:.2f}-{100 * g['acc_max']:.2f}% | {g['n']} |" for g in groups]
    return lines + [""]


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(run_dir, out, results)
    headers = [h for _, h in COLUMNS]
    rows = table_rows(results)
    searches = results["searches"]
    notes = [f"- **{m}**: search {s['seconds']:.0f} s; {_verdict_words(s)}; normal cell has {s['param_free_normal']} of "
             f"8 parameter-free operations; genotype `{json.dumps(s['genotype'])}`" for m, s in searches.items()]
    warning = no_evidence(searches)

    md = [f"# {results['name']}: searched sparse cells on {results['dataset']}", "",
          *([f"**{warning}**", ""] if warning else []), results["summary"], "",
          "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", *seed_table(results), "## Searches", "", *notes, "", "## Plots", ""]
    md += [f"![{cap}]({name})" for name, cap in plots]
    (out / "report.md").write_text("\n".join(md) + "\n")

    esc = html.escape
    body = [f"<h1>{esc(results['name'])}: searched sparse cells on {esc(results['dataset'])}</h1>",
            *([f"<p><b>{esc(warning)}</b></p>"] if warning else []), f"<p>{esc(results['summary'])}</p>",
            "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>"]
    body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
    body += ["</table>", "<h2>Searches</h2><ul>"]
    body += [f"<li><b>{esc(m)}</b>: search {s['seconds']:.0f} s; {esc(_verdict_words(s))}; {s['param_free_normal']} of 8 "
             f"normal-cell operations parameter-free</li>" for m, s in searches.items()]
    body += ["</ul><h2>Plots</h2>"]
    body += [f'<figure><img src="{name}" alt="{esc(cap)}"><figcaption>{esc(cap)}</figcaption></figure>' for name, cap in plots]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}")
    (out / "index.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(results['name'])}</title>"
                                    f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
    return out
