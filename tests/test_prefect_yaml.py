"""prefect.yaml: every deployment's entrypoint resolves to a flow and its parameters fit the flow."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_deployments_resolve_and_parameters_match():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["deployments"], "no deployments"
    for dep in spec["deployments"]:
        path, _, name = dep["entrypoint"].partition(":")
        assert (ROOT / path).is_file(), dep["entrypoint"]
        flow = load_flow_from_entrypoint(str(ROOT / path) + ":" + name)
        params = inspect.signature(flow.fn).parameters
        unknown = set(dep.get("parameters", {})) - set(params)
        assert not unknown, f"{dep['name']}: parameters {unknown} are not arguments of {name}"
        required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
        assert required - set(dep.get("parameters", {})) <= {"video"}, dep["name"]  # per-run parameter
        assert dep["work_pool"]["name"]
        for sched in dep.get("schedules", []):
            from prefect.client.schemas.schedules import CronSchedule

            cron = CronSchedule(cron=sched["cron"], timezone=sched.get("timezone", "UTC"))
            assert cron.cron == sched["cron"]
    names = {d["name"] for d in spec["deployments"]}
    assert {"reconstruct-video", "nightly-archive"} <= names
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly-archive")
    assert nightly["schedules"] and set(nightly["parameters"]) >= {"sources", "store", "predictor"}
