"""Alert rules and the Grafana dashboard (k8s/observability): valid PromQL, only
metric names the code defines, one copy shared by compose and Kubernetes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess

import pytest
import yaml

from tests.deploy_checks import PROMETHEUS_SERIES, ROOT, by_kind, defined_series, promql_series, render

OBSERVABILITY = ROOT / "k8s" / "observability"
RULES = OBSERVABILITY / "rlhf-alerts.rules.yaml"
DASHBOARD = OBSERVABILITY / "rlhf-loop.dashboard.json"
# What the issue asks the rules to watch, by the alert that does.
WATCHED = {
    "serving errors": "RlhfRpcErrors",
    "serving latency": "RlhfGenerationSlow",
    "queue depth": "RlhfPolicyQueueDeep",
    "dead letters": "RlhfEventsDeadLettered",
    "events dropped": "RlhfEventsDropped",
    "consumer lag": "RlhfConsumerLagHigh",
    "trainer stuck": "RlhfTrainerStuck",
    "trainer failing": "RlhfTrainerRoundsFailing",
    "gate refusing for too long": "RlhfGateRefusingForLong",
    "KL over budget": "RlhfPpoKlOverBudget",
    "replicas on different versions": "RlhfReplicasOnDifferentVersions",
}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expression) of every query in the dashboard."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def assert_defined(names: set[str], where: str) -> None:
    unknown = names - defined_series() - PROMETHEUS_SERIES
    assert not unknown, f"{where}: no code defines {sorted(unknown)}"


def test_every_alert_is_valid_promql_over_metrics_the_code_defines():
    assert {rule["alert"] for rule in rules()} >= set(WATCHED.values())
    for rule in rules():
        try:
            names = promql_series(rule["expr"])
        except ValueError as exc:
            pytest.fail(f"alert {rule['alert']}: {exc}")
        assert_defined(names, f"alert {rule['alert']}")
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_dashboard_query_is_valid_promql_over_metrics_the_code_defines():
    targets = dashboard_targets()
    assert len(targets) >= 20
    for title, expr in targets:
        try:
            names = promql_series(expr, grafana=True)
        except ValueError as exc:
            pytest.fail(f"dashboard panel {title!r}: {exc}")
        assert_defined(names, f"dashboard panel {title!r}")
    queried = {name for _, expr in targets for name in promql_series(expr, grafana=True)}
    for needed in (
        "rlhf_rpc_requests_total",
        "rlhf_feedback_accepted_total",
        "rlhf_policy_kl",
        "rlhf_promotions_total",
    ):
        assert needed in queried
    assert "rlhf_trainer_feedback_verdicts_total" in queried, "per-version satisfaction"


def test_the_name_check_catches_a_misspelled_metric():
    with pytest.raises(AssertionError, match="rlhf_rpc_request_total"):
        assert_defined(promql_series("rate(rlhf_rpc_request_total[5m])"), "a typo")
    with pytest.raises(ValueError):
        promql_series("rate(rlhf_rpc_requests_total[5m]")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_rules_and_the_compose_prometheus_config():
    for args in (
        ["check", "rules", str(RULES)],
        ["check", "config", "--syntax-only", str(ROOT / "docker/prometheus.yml")],
    ):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_prometheusrule_carries_the_same_rules():
    spec = importlib.util.spec_from_file_location("render_prometheusrule", OBSERVABILITY / "render_prometheusrule.py")
    assert spec is not None and spec.loader is not None
    render_prometheusrule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_prometheusrule)
    committed = (OBSERVABILITY / "prometheusrule.yaml").read_text()
    assert committed == render_prometheusrule.render(), "run `python k8s/observability/render_prometheusrule.py`"
    (rule,) = by_kind(render("observability"), "PrometheusRule").values()
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_kubernetes_and_compose_load_the_same_two_files():
    (dashboard,) = by_kind(render("observability"), "ConfigMap").values()
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"][DASHBOARD.name] == DASHBOARD.read_text()
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())["services"]
    prometheus_mounts = [v.split(":")[0] for v in compose["prometheus"]["volumes"]]
    grafana_mounts = [v.split(":")[0] for v in compose["grafana"]["volumes"]]
    assert f"../k8s/observability/{RULES.name}" in prometheus_mounts
    assert f"../k8s/observability/{DASHBOARD.name}" in grafana_mounts
    production = {d["kind"] for d in render("overlays/production")}
    assert {"PrometheusRule", "ServiceMonitor"} <= production


def test_prometheus_scrapes_every_service_under_its_kubernetes_job_name():
    """The rules and dashboard select by job: compose's job names are the ServiceMonitor's (the Service names)."""
    config = yaml.safe_load((ROOT / "docker/prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())["services"]
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    services = by_kind(render("overlays/production"), "Service")
    for name in ("policy", "reward", "feedback", "trainer"):
        metrics_port = next(p["port"] for p in services[name]["spec"]["ports"] if p["name"] == "metrics")
        assert jobs[name] == [f"{name}:{metrics_port}"]
        assert compose[name]["environment"]["RLHF_METRICS_PORT"] == str(metrics_port)
    (monitor,) = by_kind(render("overlays/production"), "ServiceMonitor").values()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics" and "jobLabel" not in monitor["spec"]
