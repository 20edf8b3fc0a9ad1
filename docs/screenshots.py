"""The TensorBoard screenshots of docs/tensorboard.md, taken from a real run.

    python docs/screenshots.py [--out docs/images] [--keep DIR]

Trains ``experiment=noisy_line`` for 60 epochs in a temporary directory, starts TensorBoard
on 127.0.0.1, and has headless Chromium (Debian's ``chromium``) photograph each tab the
docs show. It fails (exit 1, naming the tab) when a tab's data endpoint is empty or its
picture is: fewer than 0.5 % of the pixels below the tab bar differ from the background.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

#: tab (URL fragment) -> the data endpoint that must answer with something.
TABS = {
    "scalars": "/data/plugin/scalars/tags",
    "custom_scalars": "/data/plugin/custom_scalars/layout",
    "images": "/data/plugin/images/tags",
    "text": "/data/plugin/text/tags",
    "hparams": "/data/plugin/hparams/experiment",
}
SIZE = (1400, 1000)
TAB_BAR = 130  # pixels of TensorBoard's header and tab bar at this size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read()


def _has_data(base: str, tab: str) -> bool:
    path = TABS[tab]
    if tab == "hparams":
        body = json.loads(_get(base + path, json.dumps({"experimentName": ""}).encode()))
        return bool(body.get("hparamInfos"))
    body = json.loads(_get(base + path))
    if tab == "custom_scalars":
        return bool(body.get("category"))
    return any(body.values())


def _ink(png: Path) -> float:
    """The share of pixels below the tab bar that are not the page's background."""
    import matplotlib.image as mpimg
    import numpy as np

    pixels = mpimg.imread(png)[TAB_BAR:, :, :3]
    background = np.median(pixels.reshape(-1, 3), axis=0)
    return float((np.abs(pixels - background).sum(axis=2) > 0.15).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images")
    parser.add_argument("--keep", type=Path, help="train into DIR and keep it")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("screenshots: chromium is not installed (apt install chromium)", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="reglab-shots-"))
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    if not (run / "metrics.json").exists():
        bin_dir = Path(sys.executable).parent
        subprocess.run([str(bin_dir / "reglab-train"), "experiment=noisy_line",
                        "trainer.max_epochs=60", f"hydra.run.dir={run}"], check=True,
                       cwd=work, stdout=subprocess.DEVNULL)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(run),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    failed = []
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if _has_data(base, "scalars"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("screenshots: TensorBoard did not answer", file=sys.stderr)
                return 1
            time.sleep(0.5)
        args.out.mkdir(parents=True, exist_ok=True)
        for tab in TABS:
            png = args.out / f"tensorboard_{tab}.png"
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                            "--hide-scrollbars", f"--window-size={SIZE[0]},{SIZE[1]}",
                            "--virtual-time-budget=20000", f"--screenshot={png}",
                            f"{base}/#{tab}"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=120)
            ink = _ink(png)
            data = _has_data(base, tab)
            print(f"{tab:15s} data {'yes' if data else 'NO '}  ink {ink:6.1%}  {png}")
            if not data or ink < 0.005:
                failed.append(tab)
    finally:
        server.terminate()
        server.wait(timeout=30)
    if failed:
        print(f"screenshots: empty tab(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
