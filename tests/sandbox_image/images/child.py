"""A second slot server's worth of image store, in its own process, for cross-process tests.

    python -m tests.sandbox_image.images.child get <store root> <ref>
        prints {"digest", "rootfs", "unpacks", "hits"} as JSON after one get
    python -m tests.sandbox_image.images.child hold <store root> <ref>
        pins the image, prints "pinned", and keeps it pinned until stdin closes
"""

from __future__ import annotations

import asyncio
import json
import sys

from sandbox_image.images import ImageStore


async def main(mode: str, root: str, ref: str) -> None:
    store = ImageStore(root, max_bytes=1 << 40)
    try:
        if mode == "get":
            image = await store.get(ref)
            print(json.dumps({"digest": image.digest, "rootfs": str(image.rootfs),
                              "unpacks": store.stats.unpacks, "hits": store.stats.hits}), flush=True)
        else:
            async with store.use(ref):
                print("pinned", flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
