"""The import graph of scratchlm, checked against the layer table in docs/architecture.md, and drawn.

    python scripts/architecture.py            # print violations and circles (exit 1 if any), redraw the picture
    python scripts/architecture.py --check    # only check

Only the standard library reads the graph (`ast`): every `import scratchlm...` / `from scratchlm... import` in a
module counts, at the top or inside a function, TYPE_CHECKING blocks included (a lazy import is still a
dependency). tests/test_architecture.py runs the same check.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
DOC = ROOT / "docs" / "architecture.md"
PICTURE = ROOT / "docs" / "architecture.png"
CLI = "cli"  # the unit of every argparse module: scratchlm/cli.py and <pkg>/cli.py


def module_name(path: Path, src: Path = SRC) -> str:
    """Dotted module name of a file under src/ (a package's __init__.py is the package)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imported(node: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The scratchlm modules one import statement loads, with relative imports resolved."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names} & modules
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # `from pkg import mod` depends on the module pkg.mod; `from pkg import name` on pkg itself
    subs = {f"{target}.{a.name}" for a in node.names} & modules
    names_of_target = len(subs) < len(node.names)
    return (subs | ({target} if names_of_target else set())) & modules


def import_graph(src: Path = SRC, package: str = "scratchlm") -> dict[str, set[str]]:
    """{module: the scratchlm modules it imports} for every module of `package` under `src`."""
    files = {module_name(p, src): p for p in sorted((src / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        deps: set[str] = set()
        for node in ast.walk(tree):
            deps |= _imported(node, mod, path.name == "__init__.py", set(files))
        graph[mod] = deps - {mod}
    return graph


def unit_of(module: str, package: str = "scratchlm") -> str:
    """The layer-table unit a module belongs to: its top-level package or module under scratchlm, or `cli` (every
    `cli` module, and `__main__`, the `python -m scratchlm` door to scratchlm/cli.py)."""
    if module == package:
        return package
    if module.split(".")[-1] in (CLI, "__main__"):
        return CLI
    return module.split(".")[1]


def read_layers(doc: Path = DOC) -> dict[str, int]:
    """{unit: layer} from the table in docs/architecture.md: rows `| N | `unit` `unit` ... | ... |`."""
    layers: dict[str, int] = {}
    for line in doc.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for unit in re.findall(r"`([\w.]+)/?`", m.group(2)):
                layers[unit.removesuffix(".py")] = int(m.group(1))
    if not layers:
        raise ValueError(f"{doc}: no layer table (rows `| N | `unit` ... |`)")
    return layers


def violations(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Imports that run against the table: to a higher layer, or across units on the same layer; unknown units."""
    out = []
    for mod in sorted(graph):
        unit = unit_of(mod)
        if unit not in layers:
            out.append(f"{mod}: unit {unit!r} is not in the layer table of {DOC.name}")
            continue
        for dep in sorted(graph[mod]):
            dunit = unit_of(dep)
            if dunit not in layers or dunit == unit:
                continue
            if layers[dunit] >= layers[unit]:
                out.append(f"{mod} (layer {layers[unit]}, {unit}) imports {dep} (layer {layers[dunit]}, {dunit})")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph folded onto units (packages): {unit: units it imports}."""
    out: dict[str, set[str]] = defaultdict(set)
    for mod, deps in graph.items():
        out[unit_of(mod)].update(unit_of(d) for d in deps if unit_of(d) != unit_of(mod))
    return dict(out)


def draw(graph: dict[str, set[str]], layers: dict[str, int], out: Path = PICTURE) -> Path:
    """Draw the units as boxes in rows by layer (lowest at the bottom) and their imports as arrows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = unit_graph(graph)
    present = sorted({u for u in units} | {d for ds in units.values() for d in ds}, key=lambda u: (layers.get(u, 99), u))
    rows: dict[int, list[str]] = defaultdict(list)
    for u in present:
        rows[layers.get(u, 99)].append(u)
    pos = {}
    for layer, members in rows.items():
        shift = 0.12 * (1 if layer % 2 else -1) / len(members)  # stagger rows so arrows do not run through boxes
        for i, u in enumerate(members):
            pos[u] = ((i + 1) / (len(members) + 1) + shift, layer)
    fig, ax = plt.subplots(figsize=(11, 10))
    packages = {u for u in units if (SRC / "scratchlm" / u).is_dir()}
    for u, deps in units.items():
        if u == CLI:  # every package's command module: its arrows would hide the rest
            continue
        for d in deps:
            (x0, y0), (x1, y1) = pos[u], pos[d]
            ax.annotate("", xy=(x1, y1 + 0.18), xytext=(x0, y0 - 0.18),
                        arrowprops=dict(arrowstyle="->", color="0.6", lw=0.7, shrinkA=2, shrinkB=2))
    for u, (x, y) in pos.items():
        ax.text(x, y, u + ("/" if u in packages else ""),
                ha="center", va="center", fontsize=10,
                bbox=dict(boxstyle="round,pad=0.35", fc="#e8f0fe" if u != CLI else "#fde8e8", ec="0.3"))
    for layer in rows:
        ax.text(-0.02, layer, f"layer {layer}", ha="right", va="center", fontsize=9, color="0.4")
    ax.set_xlim(-0.12, 1.02)
    ax.set_ylim(-0.7, max(rows) + 0.7)
    ax.axis("off")
    ax.set_title("scratchlm: packages by layer; arrows are imports, and they only point down\n"
                 "(cli: scratchlm/cli.py and every <package>/cli.py, which import their own package; arrows left out)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    """Check the import graph against the layer table; redraw docs/architecture.png unless --check."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only check; do not redraw the picture")
    args = ap.parse_args(argv)
    graph, layers = import_graph(), read_layers()
    bad = violations(graph, layers)
    circles = cycles(graph)
    for line in bad:
        print("against the table:", line)
    for c in circles:
        print("import circle:", " <-> ".join(c))
    if not args.check:
        print(f"wrote {draw(graph, layers)}")
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports: "
          f"{len(bad)} against the table, {len(circles)} circles")
    return 1 if bad or circles else 0


if __name__ == "__main__":
    sys.exit(main())
