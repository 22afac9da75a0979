#!/usr/bin/env python3
"""Extracts the OpenAPI v2 definitions of the built-in types the simulator serves from a real
kube-apiserver's /openapi/v2 (descriptions dropped), for src/builtin/openapi.json (made from
kube-apiserver v1.36.2, the version the simulator models).

Usage: curl … https://127.0.0.1:PORT/openapi/v2 > full.json; extract-openapi.py full.json OUT
"""
import json
import sys

ROOTS = [
    "io.k8s.api.core.v1.ConfigMap",
    "io.k8s.api.core.v1.Secret",
    "io.k8s.api.core.v1.Namespace",
    "io.k8s.api.core.v1.Service",
    "io.k8s.api.core.v1.ServiceAccount",
    "io.k8s.api.core.v1.Pod",
    "io.k8s.api.core.v1.Event",
    "io.k8s.api.core.v1.PersistentVolumeClaim",
    "io.k8s.api.core.v1.PersistentVolume",
    "io.k8s.api.apps.v1.Deployment",
    "io.k8s.api.apps.v1.StatefulSet",
    "io.k8s.api.rbac.v1.Role",
    "io.k8s.api.rbac.v1.ClusterRole",
    "io.k8s.api.rbac.v1.RoleBinding",
    "io.k8s.api.rbac.v1.ClusterRoleBinding",
    "io.k8s.api.coordination.v1.Lease",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
]


def main(src, out):
    defs = json.load(open(src))["definitions"]
    seen = set()

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "$ref" and isinstance(v, str):
                    name = v.split("/")[-1]
                    if name not in seen:
                        seen.add(name)
                        walk(defs[name])
                else:
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for r in ROOTS:
        seen.add(r)
        walk(defs[r])

    def strip(x):
        if isinstance(x, dict):
            # Documentation text, not a property that happens to be called "description".
            if isinstance(x.get("description"), str):
                x.pop("description")
            for v in x.values():
                strip(v)
        elif isinstance(x, list):
            for v in x:
                strip(v)

    sub = {k: defs[k] for k in sorted(seen)}
    strip(sub)
    with open(out, "w") as f:
        json.dump({"definitions": sub}, f, indent=None, separators=(",", ":"), sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
