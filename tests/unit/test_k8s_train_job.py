"""Static checks of the training Job manifest (deploy/k8s/jobs/train-job.yaml)."""

from __future__ import annotations

import argparse

from tests.unit.test_k8s_manifests import K8S, load_docs, shared_config_literals, visearch_container

JOB = K8S / "jobs" / "train-job.yaml"


def job_container() -> tuple[dict, dict]:
    (job,) = load_docs(JOB)
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "visearch"
    return job, visearch_container(job)


def test_train_job_runs_the_training_entry_point_with_options_it_accepts() -> None:
    from services.training.main import add_training_arguments

    _, container = job_container()
    assert container["command"] == ["python", "-m", "services.training.main"]
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    args = parser.parse_args(container["args"])  # exits (fails) on an unknown option
    assert args.collection and args.dims > 0
    assert str(args.cache_dir).startswith("/cache") and str(args.model_cache_dir).startswith(
        "/cache"
    )


def test_train_job_uses_the_base_image_and_endpoints() -> None:
    (base,) = load_docs(K8S / "base" / "kustomization.yaml")
    image = base["images"][0]
    _, container = job_container()
    assert container["image"] == f"{image['newName']}:{image['newTag']}"
    shared = shared_config_literals()
    env = {e["name"]: e["value"] for e in container["env"]}
    for name in ("VISEARCH_S3_ENDPOINT", "VISEARCH_REDIS_URL", "VISEARCH_S3_SECURE"):
        assert env[name] == shared[name], name
    assert {"secretRef": {"name": "visearch-s3"}} in container["envFrom"]


def test_train_job_is_locked_down_bounded_and_writes_only_to_volumes() -> None:
    job, container = job_container()
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] <= 2
    assert job["spec"]["activeDeadlineSeconds"] > 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HOME"].startswith("/cache") and {"/cache", "/tmp"} <= mounts


def test_retrain_cronjob_trains_only_on_new_images_and_applies_through_the_gateway() -> None:
    from services.training.main import add_training_arguments

    (cron,) = load_docs(K8S / "jobs" / "retrain-cronjob.yaml")
    assert cron["kind"] == "CronJob" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    container = visearch_container(cron["spec"]["jobTemplate"])
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    args = parser.parse_args(container["args"])
    assert args.apply and args.if_new > 0
    env = {e["name"]: e["value"] for e in container["env"]}
    (gateway,) = [d for d in load_docs(K8S / "base" / "gateway.yaml") if d["kind"] == "Service"]
    port = gateway["spec"]["ports"][0]["port"]
    assert env["VISEARCH_GATEWAY"] == f"{gateway['metadata']['name']}:{port}"
    _, job_container_ = job_container()
    assert container["image"] == job_container_["image"]


def test_dba_cronjob_starts_a_pass_through_the_gateway_with_options_the_cli_accepts() -> None:
    from typer.testing import CliRunner

    from visearch.cli import app

    (cron,) = load_docs(K8S / "jobs" / "dba-cronjob.yaml")
    assert cron["kind"] == "CronJob" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["visearch", "dba"]  # the image's console script
    env = {e["name"]: e["value"] for e in container["env"]}
    (gateway,) = [d for d in load_docs(K8S / "base" / "gateway.yaml") if d["kind"] == "Service"]
    port = gateway["spec"]["ports"][0]["port"]
    assert env["VISEARCH_GATEWAY"] == f"{gateway['metadata']['name']}:{port}"
    # the options parse (an unknown one exits 2 before any connection is tried)
    result = CliRunner().invoke(app, ["dba", *container["args"], "--help"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(app, ["dba", *container["args"], "--no-such-option"])
    assert bad.exit_code == 2
