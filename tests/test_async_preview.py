"""examples/async_preview: the aiohttp MJPEG server, run as its own process, streams a ring's
frames over real HTTP on 127.0.0.1; the frames decode (OpenCV) to the ring's size."""

from __future__ import annotations

import asyncio
import os
import sys

import numpy as np
import pytest
from helpers import VGA, WAIT, unique_name

from shmring import RingWriter

aiohttp = pytest.importorskip("aiohttp")
cv2 = pytest.importorskip("cv2")

SERVER = os.path.join(os.path.dirname(__file__), "..", "examples", "async_preview", "server.py")
FRAMES = 3


def test_mjpeg_stream_over_http_decodes_to_the_ring_size() -> None:
    name = unique_name("prev")

    async def main() -> None:
        with RingWriter.create(
            name, VGA, np.uint8, slots=8, policy="overwrite", max_readers=4, max_writers=2
        ) as writer:
            server = await asyncio.create_subprocess_exec(
                sys.executable,
                SERVER,
                "--ring",
                name,
                "--port",
                "0",
                "--fps",
                "50",
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                line = await asyncio.wait_for(server.stdout.readline(), WAIT)  # type: ignore[union-attr]
                url = line.decode().rsplit(" on ", 1)[1].strip()
                images = await fetch(url, writer)
            finally:
                server.kill()
                await server.wait()
        assert len(images) == FRAMES
        for image in images:
            assert image is not None and image.shape == VGA
            assert 100 < float(image.mean()) < 156  # a frame of 128s, through JPEG

    asyncio.run(main())


async def fetch(url: str, writer: RingWriter) -> list[np.ndarray]:
    """Feed the ring every 10 ms while a client reads FRAMES parts of the stream."""
    frame = np.full(VGA, 128, np.uint8)

    async def feed() -> None:
        while True:
            await writer.awrite(frame, 1.0)
            await asyncio.sleep(0.01)  # the stream's pace, like a camera's

    feeder = asyncio.create_task(feed())
    images = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as client:
            async with client.get(url) as page:
                assert "stream.mjpg" in await page.text()
            async with client.get(url + "stream.mjpg") as response:
                assert response.status == 200
                parts = aiohttp.MultipartReader.from_response(response)
                for _ in range(FRAMES):
                    part = await parts.next()
                    assert part is not None and part.headers["Content-Type"] == "image/jpeg"
                    jpeg = await part.read()
                    images.append(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
    finally:
        feeder.cancel()
    return images
