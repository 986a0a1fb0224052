#!/usr/bin/env python3
"""Fails when a workspace crate depends on a crate of its own or a higher
layer, or when the appliance binary (`slipway`) would link a simulator or
lab code. Dev-dependencies (test targets) may reach up: tests of a lower
crate may use a simulator. Reads `cargo metadata`; no build needed.

The layers, lowest first. A new crate must be added here (the check fails
until it is), which is the moment to decide where it sits; ARCHITECTURE.md
explains each layer.
"""
import json
import subprocess
import sys

LAYERS = [
    ["inventory"],                   # the hardware model, in-band parsers, BMC/UPS clients
    ["wire", "pxe", "images"],       # agent wire types, boot protocols, image catalog and ramdisk
    ["agent", "simulators"],         # the node-side binary; simulated BMC and UPS
    ["api"],                         # the appliance: persistence, control plane, HTTP faces
    ["slipway"],                     # the appliance binary and the operator CLI
    ["hardware-tests"],              # the lab, its binary, benchmarks, end-to-end tests
]
# What the appliance's serving binary must never link.
NOT_IN_APPLIANCE = {"simulators", "hardware-tests"}
APPLIANCE = "slipway"


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
    for problem in problems:
        print(f"check-layers: {problem}", file=sys.stderr)
    print(f"check-layers: {len(members)} crates, {len(problems)} problems: {'ok' if not problems else 'FAILED'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
