#!/usr/bin/env python3
"""Fails when a workspace crate depends on a crate of its own or a higher
layer, when the appliance binary (`slipway`) would link a simulator or
lab code, when one crate holds more than a third of the workspace's
non-test source lines (the sign that it has become the whole application),
or when the top-level modules of a crate import each other in a circle. Dev-dependencies (test targets) may reach up: tests of a lower
crate may use a simulator. Reads `cargo metadata`; no build needed.

The layers, lowest first. A new crate must be added here (the check fails
until it is), which is the moment to decide where it sits; ARCHITECTURE.md
explains each layer.
"""
import json
import pathlib
import re
import subprocess
import sys

LAYERS = [
    ["inventory"],                   # the hardware model, in-band parsers, BMC/UPS clients
    ["wire", "pxe", "images"],       # agent wire types, boot protocols, image catalog and ramdisk
    ["agent", "simulators", "model"],  # the node-side binary; simulated BMC and UPS; the control-plane model
    ["store"],                       # persistence: SQLite or PostgreSQL, migrations, events
    ["api"],                         # the appliance: control plane, out-of-band runtime, HTTP faces
    ["slipway"],                     # the appliance binary and the operator CLI
    ["hardware-tests"],              # the lab, its binary, benchmarks, end-to-end tests
]
# What the appliance's serving binary must never link.
NOT_IN_APPLIANCE = {"simulators", "hardware-tests"}
APPLIANCE = "slipway"
# No crate may hold more than this share of the non-test lines.
MAX_SHARE = 1 / 3
TEST_MODULE = re.compile(r"^#\[cfg\(test\)\]\s*\n(pub(\(crate\))? )?mod ", re.M)


def production_sources(src: pathlib.Path):
    """(path, text) of a crate's `src/` files without test files
    (`*_tests.rs`, `test_*.rs`) and the `#[cfg(test)] mod` closing a file."""
    for f in sorted(src.rglob("*.rs")):
        if f.stem.endswith("_tests") or f.stem.startswith("test_"):
            continue
        text = f.read_text()
        cut = TEST_MODULE.search(text)
        yield f, text[: cut.start() if cut else len(text)]


def module_graph(src: pathlib.Path) -> dict:
    """Which top-level modules each top-level module names through
    `crate::`. The crate root (lib.rs, main.rs) is left out: it declares the
    modules and holds what they share, so every module may use it."""
    graph = {}
    for f, text in production_sources(src):
        top = f.relative_to(src).parts[0].removesuffix(".rs")
        if top in ("lib", "main"):
            continue
        names = set(re.findall(r"\bcrate::(\w+)", text))
        for group in re.findall(r"\bcrate::\{([^}]*)\}", text, re.S):
            names |= set(re.findall(r"(?:^|,)\s*(\w+)", group))
        graph.setdefault(top, set()).update(names - {top})
    return {m: refs & graph.keys() for m, refs in graph.items()}


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    order, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        order[v] = low[v] = len(order)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in order:
            visit(v)
    return found


def non_test_lines(src: pathlib.Path) -> int:
    return sum(text.count("\n") for _, text in production_sources(src))


def main() -> int:
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"],
        check=True, capture_output=True, text=True,
    ).stdout
    packages = json.loads(out)["packages"]
    members = {p["name"] for p in packages}
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    problems = []
    for name in sorted(members - layer.keys()):
        problems.append(f"{name}: not in a layer: add it to LAYERS in scripts/check-layers.py")
    runtime_deps = {}
    for p in packages:
        deps = [d["name"] for d in p["dependencies"] if d["name"] in members and d["kind"] != "dev"]
        runtime_deps[p["name"]] = deps
        for dep in deps:
            if p["name"] in layer and dep in layer and layer[dep] >= layer[p["name"]]:
                problems.append(
                    f"{p['name']} (layer {layer[p['name']]}) depends on {dep} (layer {layer[dep]}): "
                    "dependencies must point to lower layers"
                )
    # Everything the appliance binary links, transitively.
    linked, todo = set(), [APPLIANCE]
    while todo:
        for dep in runtime_deps.get(todo.pop(), []):
            if dep not in linked:
                linked.add(dep)
                todo.append(dep)
    for bad in sorted(linked & NOT_IN_APPLIANCE):
        problems.append(f"{APPLIANCE} links {bad}: the appliance must not link simulators or lab code")
    sizes = {p["name"]: non_test_lines(pathlib.Path(p["manifest_path"]).parent / "src") for p in packages}
    workspace_lines = sum(sizes.values())
    for name, lines in sorted(sizes.items(), key=lambda kv: -kv[1]):
        if lines > workspace_lines * MAX_SHARE:
            problems.append(
                f"{name} holds {lines} of {workspace_lines} non-test lines ({lines / workspace_lines:.0%}): "
                "more than a third; split it along a role"
            )
    for p in packages:
        for component in cycles(module_graph(pathlib.Path(p["manifest_path"]).parent / "src")):
            problems.append(f"{p['name']}: modules import each other in a circle: {' -> '.join(component)}")
    largest = max(sizes, key=sizes.get)
    print(f"check-layers: largest crate {largest}, {sizes[largest]} of {workspace_lines} non-test lines "
          f"({sizes[largest] / workspace_lines:.0%})")
    for problem in problems:
        print(f"check-layers: {problem}", file=sys.stderr)
    print(f"check-layers: {len(members)} crates, {len(problems)} problems: {'ok' if not problems else 'FAILED'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
