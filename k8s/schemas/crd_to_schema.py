"""Turn a CustomResourceDefinition into the strict JSON schema the manifest tests validate against.

    python k8s/schemas/crd_to_schema.py CRD.yaml VERSION > k8s/schemas/<group>/<kind>_<version>.json

What the API server does with a structural CRD schema, in JSON Schema terms:
unknown fields are an error wherever the CRD lists properties and does not say
``x-kubernetes-preserve-unknown-fields`` (``kubectl apply`` validates fields
strictly since Kubernetes 1.27), ``x-kubernetes-int-or-string`` accepts both
types and ``nullable`` accepts null. Descriptions and ``status`` are dropped (the
manifests never set a status); CEL rules (``x-kubernetes-validations``) are not
checked here. Run by hand when a vendored operator version changes; the tests
only read the JSON files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

_DROPPED_KEYS = {"description", "example", "externalDocs"}


def python_pattern(pattern: str) -> str:
    """Go's RE2 takes a flag group anywhere (``^(?i)abort``); Python only at the start."""
    if "(?i)" in pattern and not pattern.startswith("(?i)"):
        return "(?i)" + pattern.replace("(?i)", "")
    return pattern


def strict(schema: Any) -> Any:
    """The OpenAPI v3 ``schema`` as a JSON schema that refuses unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYS or key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: strict(prop) for name, prop in value.items()}
        elif key in ("items", "additionalProperties", "not") or key in ("allOf", "anyOf", "oneOf"):
            out[key] = strict(value)
        elif key == "pattern":
            out[key] = python_pattern(value)
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable"):
        out.pop("nullable")
        if "type" in out:
            out["type"] = [out["type"], "null"]
    preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def crd_schema(crd: dict, version: str) -> dict:
    """The strict schema of one served ``version`` of ``crd``, without ``status``."""
    names = crd["spec"]["names"]
    group = crd["spec"]["group"]
    match = [v for v in crd["spec"]["versions"] if v["name"] == version]
    if not match:
        served = [v["name"] for v in crd["spec"]["versions"]]
        raise SystemExit(f"{names['kind']}: no version {version!r}; the CRD has {served}")
    schema = strict(match[0]["schema"]["openAPIV3Schema"])
    schema.get("properties", {}).pop("status", None)
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version}"}
    schema["properties"]["kind"] = {"const": names["kind"]}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{names['kind']} {group}/{version}",
        **schema,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    crd = yaml.safe_load(Path(argv[0]).read_text())
    json.dump(crd_schema(crd, argv[1]), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
