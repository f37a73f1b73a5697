#!/usr/bin/env python3
"""Extract a self-contained set of Graph schemas from one of the OpenAPI subsets in
../shared/data, for the emulator's fixtures (emulator/fixtures/SOURCES.md says which).

The extract is the closure of the root types over `$ref`, plus, for every polymorphic base in
the closure (any type but `entity` and `directoryObject`), the types of the subset that derive
from it directly, so an `@odata.type` naming a derived type can be checked. Schema values are
copied unchanged.

    python3 tools/graph-extract.py ../shared/data/graph-v1.0-subset.json \
        emulator/fixtures/graph-v1.0-governance-extract.json --governance
"""

import json
import sys

PREFIX = "#/components/schemas/"
NOT_POLYMORPHIC = {"microsoft.graph.entity", "microsoft.graph.directoryObject"}

# The types the emulator's governance routes validate (emulator/src/governance.rs).
GOVERNANCE_ROOTS = [
    "microsoft.graph." + name
    for name in [
        "accessPackageCatalog",
        "accessPackage",
        "accessPackageAssignmentPolicy",
        "customExtensionStageSetting",
        "accessPackageAssignmentRequestWorkflowExtension",
        "accessPackageAssignmentWorkflowExtension",
        "logicAppTriggerEndpointConfiguration",
        "httpRequestEndpoint",
        "azureAdPopTokenAuthentication",
        "azureAdTokenAuthentication",
        "customExtensionClientConfiguration",
        "customExtensionCallbackConfiguration",
        "identityGovernance.customTaskExtension",
        "identityGovernance.customTaskExtensionCallbackConfiguration",
    ]
]


def refs(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str) and item.startswith(PREFIX):
                yield item[len(PREFIX):]
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def bases(schemas, name):
    return [
        part["$ref"][len(PREFIX):]
        for part in schemas[name].get("allOf", [])
        if "$ref" in part
    ]


def closure(schemas, roots):
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in schemas:
            sys.exit(f"{name} is not in the subset")
        seen.add(name)
        todo.extend(refs(schemas[name]))
        if name not in NOT_POLYMORPHIC:
            todo.extend(k for k in schemas if name in bases(schemas, k))
    return seen


def main():
    if len(sys.argv) != 4 or sys.argv[3] != "--governance":
        sys.exit(__doc__)
    source, target = sys.argv[1], sys.argv[2]
    with open(source, encoding="utf-8") as f:
        schemas = json.load(f)["components"]["schemas"]
    names = closure(schemas, GOVERNANCE_ROOTS)
    out = {
        "x-extract-of": "graph-v1.0-subset.json (see SOURCES.md)",
        "x-extract-roots": GOVERNANCE_ROOTS,
        "components": {"schemas": {k: schemas[k] for k in sorted(names)}},
    }
    with open(target, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"{len(names)} schemas written to {target}")


if __name__ == "__main__":
    main()
