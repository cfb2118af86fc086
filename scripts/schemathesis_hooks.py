"""Schemathesis hooks for scripts/schemathesis.sh: ids in paths name existing resources part of
the time, so operations on a job or an asset are exercised on real ones, not only on 404s.

The ids come from MPEGFLOW_SCHEMATHESIS_IDS, a file of `job UUID` / `asset UUID` lines the script
writes after seeding the platform (`ready_asset`: an uploaded, completed asset). A generated id is replaced only when it is a well-formed UUID,
so negative cases (a malformed id) stay negative; the choice is drawn by Hypothesis, so a run
is reproducible from its seed."""

import os
import uuid

import schemathesis
from hypothesis import strategies as st


def _seeded_ids():
    ids = {"job": [], "asset": [], "ready_asset": [], "webhook": [], "delivery": []}
    path = os.environ.get("MPEGFLOW_SCHEMATHESIS_IDS")
    if path:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] in ids:
                    ids[parts[0]].append(parts[1])
                    if parts[0] == "ready_asset":
                        ids["asset"].append(parts[1])
    return ids


SEEDED = _seeded_ids()


def _is_uuid(value):
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@schemathesis.hook
def flatmap_path_parameters(context, path_parameters):
    path = context.operation.path if context.operation is not None else ""
    kinds = {"/v1/jobs/": "job", "/v1/assets/": "asset", "/v1/webhooks/": "webhook",
             "/v1/webhook-deliveries/": "delivery"}
    kind = next((k for prefix, k in kinds.items() if path.startswith(prefix)), None)
    value = path_parameters.get("id") if path_parameters else None
    if kind is None or not SEEDED[kind] or not _is_uuid(value):
        return st.just(path_parameters)
    choices = [value] + SEEDED[kind]
    strategy = st.fixed_dictionaries({"id": st.sampled_from(choices)})
    if "attempt" in path_parameters:
        # Attempt 1 of a seeded job exists; other numbers exercise the missing-attempt answer.
        attempt = path_parameters["attempt"]
        return st.builds(
            lambda ids, n: {**path_parameters, **ids, "attempt": n},
            strategy,
            st.sampled_from([attempt, 1]) if isinstance(attempt, int) and attempt >= 0 else st.just(attempt),
        )
    return strategy.map(lambda ids: {**path_parameters, **ids})


# Refusals on grounds JSON Schema cannot state, of otherwise schema-valid requests: the FFmpeg
# command template's grammar and allowlists (`invalid_command`, which also covers an alias used
# for both an input and an output), and whether the named input assets and pool exist for the
# caller's org (`unknown_asset`, `unknown_pool`). Only these codes, only these operations, only the positive-data check: any
# other refusal of schema-valid data (e.g. `invalid_body`, a parse the schema does not describe)
# still fails the run.
SEMANTIC_REFUSALS = {
    ("POST", "/v1/jobs"): {"invalid_command", "unknown_asset", "unknown_pool"},
    ("POST", "/v1/jobs/validate"): {"invalid_command", "unknown_pool"},
    # Endpoint URLs: the SSRF rules (schemes, credentials, internal names and address ranges,
    # every spelling of an address) and, under this run's settings, no host names at all.
    ("POST", "/v1/webhooks"): {"invalid_url"},
    ("PATCH", "/v1/webhooks/{id}"): {"invalid_url"},
}


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if failure.code != "ST202":
        return True
    codes = SEMANTIC_REFUSALS.get((case.operation.method.upper(), case.operation.path))
    if not codes or response.status_code != 400:
        return True
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        return True
    return code not in codes


@schemathesis.hook("flatmap_body")
def seeded_job_inputs(context, body):
    """A job body names its inputs by asset id; part of the time they are the seeded ready
    asset, so submissions are judged on their command, not only refused for a missing asset."""
    operation = context.operation
    if operation is None or (operation.method.upper(), operation.path) != ("POST", "/v1/jobs"):
        return st.just(body)
    inputs = body.get("inputs") if isinstance(body, dict) else None
    ready = SEEDED["ready_asset"]
    if not ready or not isinstance(inputs, dict) or not inputs or not all(_is_uuid(v) for v in inputs.values()):
        return st.just(body)
    seeded = {**body, "inputs": {alias: ready[0] for alias in inputs}}
    choices = [seeded, body]
    outputs = body.get("outputs")
    if isinstance(outputs, dict) and len(inputs) == 1 and len(outputs) == 1 and not set(inputs) & set(outputs):
        # One input, one output, distinct aliases: with a template that is valid for them, the
        # submission is judged on the rest of the body (pool, timeout, metadata, headers).
        (source,), (target,) = inputs, outputs
        choices.append({
            **seeded,
            "outputs": {target: "out.mp4"},
            "command": "-i {{%s}} -c:v libx264 -preset ultrafast {{%s}}" % (source, target),
        })
    return st.sampled_from(choices)
