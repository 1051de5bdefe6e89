"""MJPEG preview: an asyncio web server (aiohttp) that streams the newest frame of a ring to
every browser that opens it, as a JPEG stream (multipart/x-mixed-replace).

    python server.py [--ring camera-edges] [--host 127.0.0.1] [--port 8080] [--fps 15]

Open http://127.0.0.1:8080/ in a browser. Each viewer gets its own reader, which takes the
newest frame (`alatest`: older ones are skipped) at most `--fps` times a second; on a
`block` ring, a viewer that stops asking (a network that stops draining) holds the writer
back once the ring is full, as any reader does. JPEG encoding runs in a worker thread, so
the event loop keeps serving other viewers meanwhile. Frames are uint8 images, (H, W) or (H, W, 3)
BGR (what OpenCV and the camera demo produce). Needs `pip install 'shmring[async,demo]'`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import cv2
import numpy as np

from shmring import EndOfStream, RingReader, RingTimeout, WriterGone

if TYPE_CHECKING:
    from aiohttp import web

BOUNDARY = "frame"
PAGE = """<!doctype html><title>shmring preview: {ring}</title>
<h1>{ring}</h1><img src="/stream.mjpg" alt="live preview of ring {ring}">"""


def encode(image: np.ndarray, quality: int) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not encode a frame of shape {image.shape} as JPEG")
    return bytes(jpeg)


def make_app(ring: str, fps: float, quality: int, attach_timeout: float) -> web.Application:
    from aiohttp import web  # lazily: only the `async` extra installs it

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE.format(ring=ring), content_type="text/html")

    async def stream(request: web.Request) -> web.StreamResponse:
        try:
            reader = await RingReader.aattach(ring, timeout=attach_timeout)
        except FileNotFoundError:
            raise web.HTTPNotFound(text=f"no ring named {ring!r}: start its writer") from None
        response = web.StreamResponse(
            headers={
                "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        with reader, contextlib.suppress(ConnectionResetError, EndOfStream, WriterGone):
            while True:
                started = time.monotonic()
                try:
                    frame = await reader.alatest(timeout=1.0)
                except RingTimeout:
                    continue  # no new frame for a second: keep the connection, wait on
                with frame:  # held (never overwritten) while it is encoded
                    jpeg = await loop.run_in_executor(None, encode, frame.array, quality)
                await response.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                    + jpeg
                    + b"\r\n"
                )
                await asyncio.sleep(max(0.0, 1.0 / fps - (time.monotonic() - started)))
        return response

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/stream.mjpg", stream)
    return app


async def serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    runner = web.AppRunner(make_app(args.ring, args.fps, args.quality, args.attach_timeout))
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"serving ring {args.ring!r} on http://{host}:{port}/", flush=True)
    try:
        await asyncio.Event().wait()  # until Ctrl-C
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ring", default="camera-edges")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port")
    parser.add_argument("--fps", type=float, default=15.0, help="most frames/s per viewer")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality, 0-100")
    parser.add_argument(
        "--attach-timeout", type=float, default=5.0, help="seconds a viewer waits for the ring"
    )
    args = parser.parse_args()
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise SystemExit("this example needs aiohttp: pip install 'shmring[async]'") from None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
