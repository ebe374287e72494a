"""shoal's Python binding, used as an app would (tests/tests/bindings.rs runs it): a
broadcaster fed the MPEG-TS ffmpeg makes, a viewer on its ticket, ffmpeg playing the
viewer's URL, its stats and events read, both stopped with their ports free again.
Prints one JSON line of what it measured; exits non-zero on any failure. Standard library
only (no pytest here)."""

import asyncio
import json
import socket
import subprocess
import sys
import time

import shoal

ENCODER = [
    "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
    "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
    "-t", "60", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "veryfast",
    "-tune", "zerolatency", "-g", "25", "-b:v", "500k", "-c:a", "aac", "-b:a", "64k",
    "-f", "mpegts", "-",
]


def port_is_free(kind, port):
    s = socket.socket(socket.AF_INET, kind)
    # (As any server binds: connections the viewer closed may linger in TIME_WAIT.)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def frames_played(url, seconds):
    out = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-progress", "pipe:1",
         "-i", url, "-t", str(seconds), "-f", "null", "-"],
        capture_output=True, text=True, timeout=seconds + 30,
    )
    frames = [int(l.split("=")[1]) for l in out.stdout.splitlines() if l.startswith("frame=")]
    return (frames[-1] if frames else 0), out.returncode


async def main():
    b = await shoal.start_broadcaster(shoal.BroadcasterConfig(
        name="from python", key=None, listen="127.0.0.1:0", bootstrap=[]))
    ticket = b.ticket()
    assert ticket.startswith("shoal1"), ticket
    assert len(b.key()) == 32

    encoder = subprocess.Popen(ENCODER, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    loop = asyncio.get_running_loop()

    async def pump():
        while True:
            data = await loop.run_in_executor(None, encoder.stdout.read1, 65536)
            if not data:
                return
            await b.push_ts(data)

    pumping = asyncio.create_task(pump())

    started = time.monotonic()
    viewer = await shoal.start_viewer(shoal.ViewerConfig(
        ticket=ticket, http="127.0.0.1:0", listen="127.0.0.1:0", upload_kbps=None,
        bootstrap=[], low_latency=True))
    url = viewer.playlist_url()
    assert url and url.startswith("http://127.0.0.1:") and url.endswith("/live.m3u8"), url

    seen = []
    first_segment_s = None
    deadline = started + 30
    while first_segment_s is None:
        event = await asyncio.wait_for(viewer.next_event(), timeout=max(0.1, deadline - time.monotonic()))
        assert event is not None, "the viewer's events ended early"
        seen.append(type(event).__name__.split(".")[-1])
        if event.is_segment_published():
            first_segment_s = time.monotonic() - started
            assert event.duration_ms > 0, event
    assert "LIVE" in seen, seen

    frames, code = await loop.run_in_executor(None, frames_played, url, 4)
    assert code == 0 and frames > 50, (code, frames)

    stats = viewer.stats()
    assert stats.segments_published > 0 and stats.neighbours >= 1, stats
    full = json.loads(viewer.stats_json())
    assert full["segments"]["published"] >= stats.segments_published, full["segments"]

    http_port = int(url.split(":")[2].split("/")[0])
    await viewer.stop()
    # What was told before the stop is still read; then the events end.
    for _ in range(10_000):
        if await asyncio.wait_for(viewer.next_event(), timeout=5) is None:
            break
    else:
        raise AssertionError("events do not end when the viewer stops")
    encoder.kill()
    encoder.wait()
    await pumping
    await b.stop()
    assert port_is_free(socket.SOCK_STREAM, http_port), "the viewer's HTTP port is free again"

    print(json.dumps({
        "first_segment_s": round(first_segment_s, 2),
        "frames_played": frames,
        "events_seen": sorted(set(seen)),
        "segments_published": stats.segments_published,
        "latency_p50_ms": stats.latency_p50_ms,
        "startup_ms": stats.startup_ms,
    }))


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(), timeout=120))
    except Exception as e:  # one line, then a failing exit
        print(f"FAILED: {e!r}", file=sys.stderr)
        raise
