"""A PNG of a rendered report, by headless Chromium: for the README's pictures and the report tests.

Not part of the runtime package: nothing in a job needs a browser.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# ------------------------------------------------------------------------------------------ screenshot


def find_chromium() -> str | None:
    """Path of the first headless-capable Chromium on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _blank_rows_at_bottom(png_path: Path) -> int:
    """How many rows at the bottom of the screenshot are the page background (plain white)."""
    from PIL import Image  # pillow ships with matplotlib

    with Image.open(png_path) as image:
        pixels = np.asarray(image.convert("RGB"))
    non_blank = np.flatnonzero((pixels < 250).any(axis=(1, 2)))
    return pixels.shape[0] if non_blank.size == 0 else pixels.shape[0] - 1 - int(non_blank[-1])


def _crop_bottom(png_path: Path, keep_margin: int = 24) -> None:
    from PIL import Image

    blank = _blank_rows_at_bottom(png_path)
    with Image.open(png_path) as image:
        height = image.height - max(0, blank - keep_margin)
        cropped = image.crop((0, 0, image.width, max(height, 1)))
    cropped.save(png_path)


def _run_chromium(exe: str, html_path: Path, png_path: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory(prefix="recsys-chromium-") as profile:
        # a private profile: concurrent screenshots would otherwise fight over the default profile's lock
        cmd = [
            exe,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png_path}",
            html_path.as_uri(),
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"{exe} did not finish the screenshot of {html_path} within 180 s") from e
    if done.returncode != 0 or not png_path.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-10:])
        raise RuntimeError(f"{exe} failed to screenshot {html_path} (exit {done.returncode}):\n{tail}")


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1280) -> Path:
    """Render the HTML to a PNG with headless Chromium (chromium/chromium-browser/google-chrome on PATH); raises
    RuntimeError with a clear message when none is installed."""
    exe = find_chromium()
    if exe is None:
        raise RuntimeError(
            f"no headless browser found: none of {', '.join(CHROMIUM_NAMES)} is on PATH "
            "(on Debian/Ubuntu: apt-get install -y chromium)"
        )
    html_path, png_path = Path(html_path).resolve(), Path(png_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(html_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    # Headless Chromium captures the window, not the page; grow the window until the page ends above its bottom.
    height = 4000
    while True:
        png_path.unlink(missing_ok=True)
        _run_chromium(exe, html_path, png_path, width, height)
        if _blank_rows_at_bottom(png_path) > 8 or height >= 32000:
            break
        height *= 2
    if _blank_rows_at_bottom(png_path) <= 8:
        log.warning("page of %s is taller than %d px; the screenshot is cut off", html_path, height)
    _crop_bottom(png_path)
    log.info("screenshot of %s: %s (%d px wide)", html_path, png_path, width)
    return png_path
