"""The HTTP client against real servers: retries with backoff, and errors that say which server and why."""

from __future__ import annotations

import time

import pytest

from edensplit.client.http import CloudClient, RetryPolicy, ServerError
from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.launch import free_port
from tests.conftest import make_frames


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(retries=10, backoff_s=0.2, max_backoff_s=1.0)
    assert [policy.delay(i) for i in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_connection_errors_are_retried_then_reported():
    client = CloudClient(f"http://127.0.0.1:{free_port()}", retries=2, timeout=2)
    client.retry = RetryPolicy(retries=2, backoff_s=0.05)
    frames = make_frames(2, 40, 70)
    started = time.perf_counter()
    with pytest.raises(EdenError) as err:
        client.encode(frames[0], frames[1])
    assert err.value.code == ErrorCode.UPSTREAM_ERROR
    assert "cannot reach the cloud server" in err.value.message and "after 3 attempts" in err.value.message
    assert time.perf_counter() - started >= 0.15  # two backoffs: 0.05 + 0.1


def test_overload_is_retried_with_backoff_then_reported(cloud):
    """The in-process cloud at its admission limit answers 503 OVERLOADED each time."""
    client = CloudClient("http://testserver", retries=2)
    client.http = cloud  # the TestClient is an httpx.Client over the app
    client.retry = RetryPolicy(retries=2, backoff_s=0.05)
    rt = cloud.app.state.runtime
    saved, rt.inflight = rt.inflight, rt.max_inflight
    before = _overloaded(cloud)
    frames = make_frames(2, 40, 70)
    try:
        with pytest.raises(ServerError) as err:
            client.encode(frames[0], frames[1])
    finally:
        rt.inflight = saved
    assert err.value.code == ErrorCode.OVERLOADED and err.value.status == 503
    assert _overloaded(cloud) - before == 3  # the first try and two retries
    client.retry = RetryPolicy(retries=0)
    assert client.encode(frames[0], frames[1]).grid == (4, 6)  # once there is room again


def _overloaded(cloud) -> float:
    for line in cloud.get("/metrics").text.splitlines():
        if line.startswith('edensplit_requests_total{method="POST",route="/api/v1/encode",status="503"}'):
            return float(line.split()[-1])
    return 0.0
