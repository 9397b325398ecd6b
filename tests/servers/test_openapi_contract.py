"""The OpenAPI document tells the truth: schemathesis, every check on, passes against both servers, and what the
document says each operation answers covers what the servers' declarations and the hostile corpus say it does.

schemathesis runs in-process (ASGI) against a cloud and an edge with the tiny random model (the edge's flow B
encodes with a local encoder instead of calling a cloud), with a fixed seed, derandomized, and a small budget:
SCHEMATHESIS_SEED, MAX_EXAMPLES, STATEFUL_STEPS. Its configuration is the repository's schemathesis.toml (what
`st run` reads), whose only exceptions are the rules JSON Schema cannot state, each with its reason.
"""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from schemathesis.engine import Status, events, from_schema
from schemathesis.python import asgi

from edensplit.errors import ErrorCode
from edensplit.model.checkpoint import load_model
from edensplit.model.encoding import DIFFERENCE_LIMIT
from edensplit.model.sampler import MAX_STEPS, METHODS
from edensplit.model.seeds import MAX_SEED
from edensplit.model.stages import encode_frames, frame_difference
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.servers.edge.service import create_edge_app
from edensplit.servers.openapi import endpoint_codes
from edensplit.servers.schemas import BASE64_PATTERN
from edensplit.settings import ServerSettings
from edensplit.wire.blob import pack_encoding
from edensplit.wire.options import Options
from tests.conftest import TINY_CONFIG

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "schemathesis.toml"
SCHEMATHESIS_SEED = 20240611
MAX_EXAMPLES = 5  # per operation and phase
STATEFUL_STEPS = 5  # per stateful scenario
DEFAULT_POSITIVE = {"2xx", "3xx", "401", "403", "404", "409", "429", "5xx"}  # positive_data_acceptance's own list


def settings(**overrides: Any) -> ServerSettings:
    return ServerSettings(max_request_mb=4, max_inflight=4, eden_random_weights=True, **overrides)


def cloud_app(**overrides: Any) -> FastAPI:
    return create_cloud_app(settings(**overrides), load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True,
                                                              seed=3))


def edge_app(**overrides: Any) -> FastAPI:
    encoder = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)

    async def encode_locally(frames: list[np.ndarray], request_id: str) -> bytes:  # flow B's cloud, in-process
        difference = float(frame_difference(frames[0], frames[1])[0]) if len(frames) == 2 else None
        return pack_encoding(encode_frames(encoder, np.stack(frames)), difference)

    model = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
    return create_edge_app(settings(**overrides), model, cloud_encoder=encode_locally)


def schemathesis_config() -> schemathesis.Config:
    """The repository's schemathesis.toml, with this test's seed and budget (every check stays on)."""
    data = tomllib.loads(CONFIG.read_text())
    data["seed"] = SCHEMATHESIS_SEED
    data.setdefault("generation", {}).update({"max-examples": MAX_EXAMPLES, "deterministic": True})
    data.setdefault("phases", {}).setdefault("stateful", {})["max-steps"] = STATEFUL_STEPS
    return schemathesis.Config.from_dict(data)


def run_schemathesis(app: FastAPI) -> tuple[list[str], Counter[str]]:
    """Every phase of `st run` against `app`: the failures and errors found, and the cases run per operation."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis_config())
    problems: list[str] = []
    cases: Counter[str] = Counter()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            recorder = event.recorder
            cases[recorder.label] += len(recorder.cases)
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        case = recorder.cases[case_id].value
                        failure = check.failure_info.failure
                        problems.append(f"{recorder.label}: {check.name}: {failure.title}: {failure.message}\n"
                                        f"{check.failure_info.code_sample or case.as_curl_command()}")
        elif isinstance(event, events.NonFatalError):
            problems.append(f"{event.label}: error: {event.value!r}")
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {event.exception!r}")
    return problems, cases


@pytest.fixture(scope="module")
def lifespans():
    """schemathesis starts each app's lifespan (model warm-up) itself; stop them when the module is done."""
    yield
    asgi.shutdown_lifespans()


@pytest.mark.parametrize("make", [cloud_app, edge_app], ids=["cloud", "edge"])
def test_schemathesis_with_every_check_passes(make, lifespans):
    app = make()
    problems, cases = run_schemathesis(app)
    assert not problems, "\n\n".join(problems)
    documented = {f"{method.upper()} {path}" for path, item in app.openapi()["paths"].items() for method in item}
    assert documented <= set(cases), f"operations schemathesis did not test: {documented - set(cases)}"


# -- what the document says, against the declarations ---------------------------------------------------------

def documented_codes(operation: dict[str, Any]) -> dict[int, set[str]]:
    """status -> the error codes the document names for it (the `code` enum of its error envelope)."""
    out = {}
    for status, response in operation["responses"].items():
        schema = response.get("content", {}).get("application/json", {}).get("schema", {})
        code = schema.get("properties", {}).get("error", {}).get("properties", {}).get("code", {})
        out[int(status)] = set(code.get("enum", ()))
    return out


@pytest.fixture(scope="module")
def apps() -> dict[str, FastAPI]:
    """Apps for their documents and for requests refused before the model (never started): both servers, without
    and with a key."""
    return {"cloud": cloud_app(), "edge": edge_app(), "cloud+key": cloud_app(edensplit_api_key="k"),
            "edge+key": edge_app(edensplit_api_key="k")}


def test_every_operation_documents_every_code_it_can_answer(apps):
    for name, app in apps.items():
        paths, keyed = app.openapi()["paths"], name.endswith("+key")
        for endpoint in app.state.service.endpoints:
            operation = paths[endpoint.path]["post"]
            codes = documented_codes(operation)
            access = (ErrorCode.UNAUTHORIZED,) if keyed else ()
            for code in {*endpoint_codes(endpoint), ErrorCode.INTERNAL_ERROR, *access} - {ErrorCode.CANCELLED}:
                assert str(code) in codes.get(code.status, set()), (name, endpoint.path, code)
            assert str(ErrorCode.CANCELLED) not in set().union(*codes.values()), "CANCELLED is never sent"
            assert set(operation["requestBody"]["content"]) == set(endpoint.operation.inputs), endpoint.path
            assert set(operation["responses"]["200"]["content"]) == {"application/json", *endpoint.operation.answers}
            assert bool(operation.get("security")) == keyed, (name, endpoint.path)


def test_every_route_documents_its_statuses(apps):
    for name, app in apps.items():
        paths, keyed = app.openapi()["paths"], name.endswith("+key")
        for path, item in paths.items():
            for method, operation in item.items():
                codes = documented_codes(operation)
                assert 200 in codes and str(ErrorCode.INTERNAL_ERROR) in codes[500], (name, method, path)
                guarded = keyed and not path.startswith("/health")
                assert (str(ErrorCode.UNAUTHORIZED) in codes.get(401, set())) == guarded, (name, method, path)
                for status, response in operation["responses"].items():
                    assert response["description"] and "X-Request-ID" in response["headers"], (name, path, status)
        assert set(paths["/health/ready"]["get"]["responses"]) >= {"200", "503"}
        assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {CONTENT_TYPE_LATEST}
        if keyed:
            assert app.openapi()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    drop = apps["edge"].openapi()["paths"]["/api/v1/sessions/{session_id}"]["delete"]
    assert documented_codes(drop)[422] == {"INVALID_PARAMETER"}


def test_the_hostile_corpus_gets_only_documented_codes(apps):
    """Each HTTP case of tests/servers/test_hostile.py on a documented operation: its status and code are there."""
    from tests.servers.test_hostile import CASES, Http

    checked = 0
    for case in CASES:
        if not isinstance(case.request, Http) or case.code == "success":
            continue
        paths = apps[case.server].openapi()["paths"]
        path = case.request.path.split("?")[0]
        template = next((t for t in paths if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", t), path)), None)
        operation = paths.get(template or "", {}).get(case.request.method.lower())
        if operation is None:  # no such route or method: NOT_FOUND, METHOD_NOT_ALLOWED
            continue
        codes = documented_codes(operation)
        assert case.code in codes.get(case.expected_status, set()), (case.name, case.expected_status, case.code)
        checked += 1
    assert checked >= 60


def test_request_schemas_state_the_rules_the_servers_check(apps):
    cloud, edge = apps["cloud"].openapi()["paths"], apps["edge"].openapi()["paths"]
    encode = cloud["/api/v1/encode"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    for name in ("frame0", "frame1"):
        assert encode[name]["minLength"] == 1 and encode[name]["pattern"] == BASE64_PATTERN
    assert encode["image_size"]["anyOf"][0]["items"]["minimum"] == 1
    body = edge["/api/v1/interpolate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    props = body["properties"]
    assert props["enc_out"]["minLength"] == 1 and body["required"] == ["enc_out"]
    seed, difference = props["seed"]["anyOf"][0], props["difference"]["anyOf"][0]
    assert (seed["minimum"], seed["maximum"]) == (0, MAX_SEED)
    assert (difference["minimum"], difference["maximum"]) == (-DIFFERENCE_LIMIT, DIFFERENCE_LIMIT)
    assert props["vae_scaler"]["anyOf"][0]["exclusiveMinimum"] == 0
    sampling = props["sampling_config"]["anyOf"][0]["properties"]
    assert (sampling["num_steps"]["minimum"], sampling["num_steps"]["maximum"]) == (1, MAX_STEPS)
    assert sampling["method"]["enum"] == list(METHODS)
    session = edge["/api/v1/sessions/{session_id}/frames/{index}"]["post"]
    assert len(session["requestBody"]["content"]["application/json"]["schema"]["oneOf"]) == 2
    params = {p["name"]: p for p in session["parameters"]}
    assert params["session_id"]["schema"]["pattern"] == "^[A-Za-z0-9._:-]{1,128}$"
    assert params["index"]["schema"]["minimum"] == 0
    flat = set(Options.model_fields) - {"wire_dtype"}
    assert {n for n, p in params.items() if p["in"] == "query"} == flat
    assert params["method"]["schema"]["enum"] == list(METHODS)


def test_the_documented_rules_keep_their_own_codes(apps):
    """A schema-invalid request still gets the code of the rule it breaks, not a generic INVALID_REQUEST."""
    cloud, edge = TestClient(apps["cloud"]), TestClient(apps["edge"])  # not started: refused before the model
    for body, expected in (({"frame0": "", "frame1": ""}, (400, "INVALID_IMAGE")),
                           ({"frame0": "AAAA", "frame1": "AAAA", "image_size": [0, 0]}, (400, "INVALID_IMAGE")),
                           ({"frame0": "AAAA", "frame1": "AAAA", "image_size": ["1", 2]}, (422, "INVALID_REQUEST"))):
        r = cloud.post("/api/v1/encode", json=body)
        assert (r.status_code, r.json()["error"]["code"]) == expected, body
    r = edge.post(f"/api/v1/sessions/{'s' * 129}/frames/1", content=b"x",
                  headers={"Content-Type": "application/vnd.edensplit.enc-out+safetensors"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "INVALID_PARAMETER")
    r = edge.delete(f"/api/v1/sessions/{'s' * 129}")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "INVALID_PARAMETER")
    assert edge.delete("/api/v1/sessions/s").json()["data"] == {"dropped": False}


def test_an_undeclared_method_gets_405_with_allow(apps):
    for name in ("cloud", "edge"):
        client = TestClient(apps[name])
        operation = "/api/v1/encode" if name == "cloud" else "/api/v1/interpolate"
        for method, path, allowed in (("TRACE", "/health", "GET"), ("TRACE", "/metrics", "GET"),
                                      ("PUT", operation, "POST")):
            r = client.request(method, path)
            assert r.status_code == 405 and r.json()["error"]["code"] == "METHOD_NOT_ALLOWED", (name, method, path)
            assert allowed in r.headers["allow"]


def test_schemathesis_toml_excepts_only_what_json_schema_cannot_say(apps):
    """The only exceptions: statuses positive_data_acceptance accepts on named operations, each a 4xx those
    operations document, each entry with its reason (the comment above it); nothing disabled or excluded."""
    lines = CONFIG.read_text().splitlines()
    data = tomllib.loads("\n".join(lines))
    assert set(data) == {"operations"}, "only per-operation exceptions"
    headers = [i for i, line in enumerate(lines) if line.strip() == "[[operations]]"]
    assert len(headers) == len(data["operations"])
    assert all(i > 0 and lines[i - 1].startswith("#") for i in headers), "each exception needs its reason above it"
    documented = {path: item for app in apps.values() for path, item in app.openapi()["paths"].items()}
    for entry in data["operations"]:
        assert set(entry) == {"include-path", "checks"} and set(entry["checks"]) == {"positive_data_acceptance"}
        statuses = set(entry["checks"]["positive_data_acceptance"]["expected-statuses"])
        extra = statuses - DEFAULT_POSITIVE
        assert statuses >= DEFAULT_POSITIVE and extra and all(s.startswith("4") for s in extra), entry
        for path in entry["include-path"]:
            assert {int(s) for s in extra} <= set(documented_codes(documented[path]["post"])), path
