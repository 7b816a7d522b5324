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
    assert {"reconstruct-video", "nightly-archive", "train-geo4d"} <= names
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly-archive")
    assert nightly["schedules"] and set(nightly["parameters"]) >= {"sources", "store", "predictor"}


def test_deployment_parameters_validate_into_the_flows_specs():
    """Prefect validates a run's parameters against the flow's signature: the predictor mapping of
    each deployment becomes a typed spec, and a misspelt key is refused."""
    import copy

    import pytest
    from prefect.exceptions import ParameterTypeError
    from prefect.flows import load_flow_from_entrypoint

    from pipeline.predictors import Geo4DPredictorSpec

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for dep in spec["deployments"]:
        path, _, name = dep["entrypoint"].partition(":")
        flow = load_flow_from_entrypoint(str(ROOT / path) + ":" + name)
        params = {"video": "v.mp4", **dep["parameters"]} if "video" in inspect.signature(flow.fn).parameters \
            else dict(dep["parameters"])
        validated = flow.validate_parameters(params)
        if "predictor" not in inspect.signature(flow.fn).parameters:  # train-geo4d: files, not a predictor
            assert {k: validated[k] for k in params} == params, dep["name"]
            continue
        assert isinstance(validated["predictor"], Geo4DPredictorSpec), dep["name"]
        assert validated["predictor"].checkpoint == dep["parameters"]["predictor"]["checkpoint"]
        bad = copy.deepcopy(params)
        bad["predictor"]["chekpoint"] = bad["predictor"].pop("checkpoint")
        with pytest.raises(ParameterTypeError, match="chekpoint"):
            flow.validate_parameters(bad)
