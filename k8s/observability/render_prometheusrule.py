"""Write prometheusrule.yaml: the PrometheusRule that carries rlhf-alerts.rules.yaml to Kubernetes.

    python k8s/observability/render_prometheusrule.py

The rules file is the one source (Prometheus in docker/compose.yaml loads it as
is); kustomize cannot wrap a file into a custom resource, so this copy is
generated and tests/unit/test_observability.py fails when the two differ.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "rlhf-alerts.rules.yaml"
OUT = HERE / "prometheusrule.yaml"
HEADER = """\
# GENERATED from rlhf-alerts.rules.yaml by render_prometheusrule.py: edit the rules file, then rerun it.
# The label "release" is what kube-prometheus-stack's default ruleSelector matches
# (its Helm release name); change it if yours differs (docs/DEPLOY.md).
"""


def prometheus_rule() -> dict:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "rlhf-loop",
            "labels": {"release": "kube-prometheus-stack", "app.kubernetes.io/part-of": "rlhf-loop"},
        },
        "spec": {"groups": groups},
    }


def render() -> str:
    return HEADER + yaml.safe_dump(prometheus_rule(), sort_keys=False, width=120, allow_unicode=True)


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
