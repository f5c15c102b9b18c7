"""The bounded inference queue: 503 beyond capacity, inference off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from unetseg.serve.worker import InferenceQueue, QueueFull

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_queue_admits_workers_plus_queue_size_then_refuses() -> None:
    release = threading.Event()

    async def scenario() -> tuple[list[int], int]:
        queue = InferenceQueue(workers=1, queue_size=2)
        tasks = [asyncio.ensure_future(queue.run(lambda i=i: release.wait(5) and i))
                 for i in range(3)]
        await asyncio.sleep(0.05)
        assert queue.admitted == 3
        with pytest.raises(QueueFull):
            await queue.run(lambda: 99)
        release.set()
        results = await asyncio.gather(*tasks)
        assert queue.admitted == 0 and queue.completed == 3
        queue.shutdown()
        return list(results), queue.rejected

    results, rejected = asyncio.run(scenario())
    assert results == [0, 1, 2] and rejected == 1


def test_a_cancelled_waiter_keeps_its_slot_until_the_job_ends() -> None:
    release = threading.Event()

    async def scenario() -> None:
        queue = InferenceQueue(workers=1, queue_size=0)
        task = asyncio.ensure_future(queue.run(lambda: release.wait(5)))
        await asyncio.sleep(0.05)
        task.cancel()  # the client went away; the model is still busy with its image
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await queue.run(lambda: 1)
        release.set()
        for _ in range(100):
            if queue.admitted == 0:
                break
            await asyncio.sleep(0.01)
        assert await queue.run(lambda: 2) == 2
        queue.shutdown()

    asyncio.run(scenario())


def test_queue_validates_its_sizes() -> None:
    with pytest.raises(ValueError, match="workers >= 1"):
        InferenceQueue(workers=0)


def test_http_503_when_full_and_health_answers_during_inference(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    testclient = pytest.importorskip("fastapi.testclient")
    from shipping import sample_images, tiny_model

    from unetseg.serve.app import create_app

    app = create_app(tiny_model(tmp_path / "m.safetensors"), queue_size=1, workers=1)
    served = app.state.served
    started, release = threading.Event(), threading.Event()
    real = served.predict_ids

    def slow_predict(image):
        started.set()
        assert release.wait(10)
        return real(image)

    served.predict_ids = slow_predict
    data = sample_images()[0].read_bytes()
    with testclient.TestClient(app) as client, ThreadPoolExecutor(4) as pool:
        post = lambda: client.post("/predict?format=json", files={"file": ("a.png", data)})  # noqa: E731
        first = pool.submit(post)
        assert started.wait(10)
        second = pool.submit(post)  # waits in the queue
        for _ in range(200):
            if client.get("/health").json()["queue"]["admitted"] == 2:
                break
            time.sleep(0.01)
        t0 = time.perf_counter()
        health = client.get("/health")
        assert time.perf_counter() - t0 < 1.0  # the event loop is free while the model works
        assert health.json()["queue"]["admitted"] == 2
        third = post()
        assert third.status_code == 503 and third.headers["retry-after"] == "1"
        release.set()
        assert first.result(20).status_code == 200 and second.result(20).status_code == 200
        assert client.get("/health").json()["queue"] == {
            "capacity": 2, "admitted": 0, "completed": 2, "rejected": 1}


def test_help_imports_neither_fastapi_nor_onnx() -> None:
    import subprocess
    import sys

    code = ("import sys; from unetseg.cli import build_parser; build_parser().format_help();"
            " bad = [m for m in ('fastapi', 'uvicorn', 'onnx', 'onnxruntime', 'torch')"
            " if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
