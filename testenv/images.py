"""Builds the container images the real node runs, here, with no registry and no Docker.

    python -m testenv.images build     # build what is missing, print each image's ref
    python -m testenv.images list      # each image's ref and tarball, built or not

No container registry is reachable from these machines, so every image is made from
Debian packages and this repository:

- `pause`: the pod sandbox, a static C program (testenv/images/pause.c);
- `python`: a Debian bookworm root filesystem (debootstrap, minbase) with python3, pip
  and venv, standing in for the official `python:3.11-slim` image;
- `operator`: the project's own `Dockerfile`, unchanged, built by buildah with
  `--build-arg BASE_IMAGE=<the python image>` (a plain `docker build .` still starts
  from the official Python image);
- `example-app`: the example Celery application of `examples/app/`, built the same way.

Each image is keyed by its inputs (files and recipe), built once, and kept as a
docker-archive tarball under the testenv cache (`<cache>/images/`); the real node imports
the tarballs into its containerd (`testenv/realnode.py`). buildah keeps its own storage
under the cache too, never in /var/lib/containers. Builds run `buildah --network=host`
with the host's CA bundle mounted over the image's for the duration of each RUN: this
machine's outbound HTTPS goes through a proxy with its own certificate, and the images
themselves keep Debian's bundle.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from testenv.paths import cache_dir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REPO = "localhost/celery-operator"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

# The oldest Celery release the operator supports (docs/operations.md): the example app is
# also built on it, and the real-node tests run it.
OLDEST_CELERY = "5.4.0"
OLDEST_KOMBU = "5.4.2"  # of the same time: later kombu needs redis-py >= 6.1

DEBIAN_SUITE = "bookworm"
PYTHON_PACKAGES = (
    "python3",
    "python3-venv",
    "python3-pip",
    "python-is-python3",
    "ca-certificates",
    "tzdata",
)


class ImageError(RuntimeError):
    """A one-line reason why an image cannot be built here."""


def images_dir() -> Path:
    return cache_dir() / "images"


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()[:16]


def _tree_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    # What .dockerignore leaves out of a build context, and what pip writes into src/.
    skip = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not (skip & set(p.parts))
        and not any(part.endswith(".egg-info") for part in p.parts)
        and not p.name.endswith(".pyc")
    )


def key_of(inputs: list[Path], recipe: str) -> str:
    """A short hash of the recipe text and of every input file's path and content."""
    parts = [recipe.encode()]
    for top in inputs:
        for f in _tree_files(top):
            parts += [str(f.relative_to(ROOT)).encode(), f.read_bytes()]
    return _digest(parts)


@dataclass(frozen=True)
class Image:
    name: str
    key: str
    deps: tuple[str, ...] = ()
    build_args: tuple[str, ...] = ()  # NAME=VALUE, for a Dockerfile build

    @property
    def ref(self) -> str:
        return f"{REPO}/{self.name}:{self.key}"

    @property
    def tarball(self) -> Path:
        return images_dir() / f"{self.name}-{self.key}.tar"

    @property
    def built(self) -> bool:
        return self.tarball.exists()


@functools.cache
def plan() -> dict[str, Image]:
    """Every image with its key: cheap (hashes files), builds nothing. Computed once per
    process: a test session keeps the refs it started with while files are edited."""
    pause = Image("pause", key_of([HERE / "images" / "pause.c"], "pause: gcc -static -O2"))
    python = Image(
        "python",
        key_of([], f"python: debootstrap minbase {DEBIAN_SUITE} {' '.join(PYTHON_PACKAGES)} v1"),
    )
    op_inputs = (ROOT / "Dockerfile", ROOT / "pyproject.toml", ROOT / "README.md", ROOT / "src")
    operator = Image("operator", key_of(list(op_inputs), "operator: " + python.key), ("python",))
    app_inputs = (ROOT / "examples" / "app",)
    app = Image("example-app", key_of(list(app_inputs), "example-app: " + python.key), ("python",))
    # The same app on the oldest Celery the project supports (no soft shutdown).
    old_args = (f"CELERY_VERSION={OLDEST_CELERY}", f"KOMBU_VERSION={OLDEST_KOMBU}")
    app_old = Image(
        "example-app-oldest-celery",
        key_of(list(app_inputs), f"example-app: {python.key} {old_args}"),
        ("python",),
        build_args=old_args,
    )
    return {i.name: i for i in (pause, python, operator, app, app_old)}


# ---- running tools ----------------------------------------------------------------------
def _log(msg: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], what: str, log: Path | None = None, **kw: object) -> str:
    """Runs argv; on failure raises ImageError with the tail of its output."""
    out = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if log is not None:
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(argv)}\n{out.stdout}{out.stderr}\n")
    if out.returncode != 0:
        tail = " | ".join((out.stderr or out.stdout).strip().splitlines()[-5:])
        raise ImageError(f"{what} failed ({argv[0]} exited {out.returncode}): {tail}")
    return str(out.stdout)


def preflight() -> None:
    """What image building needs, each missing piece named in one line."""
    if os.geteuid() != 0:
        raise ImageError("building images needs root (debootstrap and buildah storage)")
    missing = [t for t in ("buildah", "debootstrap", "gcc") if shutil.which(t) is None]
    if missing:
        raise ImageError(
            f"missing {', '.join(missing)}: run testenv/install-node.sh (Debian packages)"
        )


def buildah(*args: str) -> list[str]:
    storage = cache_dir() / "buildah"
    return [
        "buildah",
        "--root",
        str(storage / "storage"),
        "--runroot",
        str(storage / "run"),
        "--storage-driver",
        "overlay",
        *args,
    ]


@contextlib.contextmanager
def _workdir(name: str) -> Iterator[Path]:
    images_dir().mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=images_dir()))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _export(image: Image, log: Path) -> None:
    """Writes the image from buildah's storage to its tarball, atomically."""
    tmp = image.tarball.with_suffix(".tar.tmp")
    tmp.unlink(missing_ok=True)
    _run(
        buildah("push", "--quiet", image.ref, f"docker-archive:{tmp}:{image.ref}"),
        f"exporting {image.ref}",
        log,
    )
    tmp.rename(image.tarball)


def _in_storage(ref: str) -> bool:
    r = subprocess.run(buildah("inspect", "--type", "image", ref), capture_output=True, check=False)
    return r.returncode == 0


def _load(image: Image, log: Path) -> None:
    """Makes a cached image available to buildah's storage (a FROM of a later build)."""
    if not _in_storage(image.ref):
        _run(
            buildah("pull", "--quiet", f"docker-archive:{image.tarball}"),
            f"loading {image.ref} into buildah",
            log,
        )


def _from_rootfs(image: Image, rootfs: Path, config: list[str], log: Path) -> None:
    """Commits a directory tree as a one-layer image."""
    ctr = _run(buildah("from", "scratch"), "buildah from scratch", log).strip()
    try:
        mnt = Path(_run(buildah("mount", ctr), "buildah mount", log).strip())
        _run(
            ["bash", "-o", "pipefail", "-c", f"tar -C {rootfs} -cf - . | tar -C {mnt} -xpf -"],
            "copying the root filesystem",
            log,
        )
        _run(buildah("umount", ctr), "buildah umount", log)
        if config:
            _run(buildah("config", *config, ctr), "buildah config", log)
        _run(buildah("commit", "--quiet", ctr, image.ref), f"committing {image.ref}", log)
    finally:
        subprocess.run(buildah("rm", ctr), capture_output=True, check=False)


def _debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (its sources), for debootstrap."""
    env = os.environ.get("DEBIAN_MIRROR")
    if env:
        return env
    for src in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in src.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    lst = Path("/etc/apt/sources.list")
    if lst.exists():
        for line in lst.read_text().splitlines():
            words = line.split()
            if len(words) > 2 and words[0] == "deb" and "security" not in words[1]:
                return next(w for w in words[1:] if "://" in w)
    raise ImageError("no Debian mirror found in apt's sources: set DEBIAN_MIRROR")


# ---- the recipes --------------------------------------------------------------------------
def build_pause(image: Image, log: Path) -> None:
    with _workdir("pause") as d:
        root = d / "rootfs"
        root.mkdir()
        _run(
            [
                "gcc",
                "-static",
                "-O2",
                "-s",
                "-o",
                str(root / "pause"),
                str(HERE / "images" / "pause.c"),
            ],
            "gcc -static pause.c",
            log,
        )
        _from_rootfs(image, root, ["--entrypoint", '["/pause"]', "--user", "65535:65535"], log)


def build_python(image: Image, log: Path) -> None:
    with _workdir("python") as d:
        root = d / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PYTHON_PACKAGES)}",
                DEBIAN_SUITE,
                str(root),
                _debian_mirror(),
            ],
            f"debootstrap {DEBIAN_SUITE}",
            log,
        )
        # An image, not a system: pip may install into it (as in the official image, whose
        # Python is not Debian's), no apt lists or caches, no docs.
        for p in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            p.unlink()
        for sub in (
            "var/lib/apt/lists",
            "var/cache/apt",
            "var/cache/debconf",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/locale",
        ):
            shutil.rmtree(root / sub, ignore_errors=True)
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "etc" / "hostname").write_text("localhost\n")
        config = [
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env",
            "LANG=C.UTF-8",
            "--cmd",
            '["python3"]',
        ]
        _from_rootfs(image, root, config, log)


def build_dockerfile(image: Image, context: Path, log: Path) -> None:
    """`docker build context` with buildah, the Dockerfile's instructions as they are."""
    python = plan()["python"]
    _load(python, log)
    args = [
        "build",
        "--quiet",
        "--network=host",
        "--pull=never",
        "--layers=false",
        "--format=docker",
        f"--build-arg=BASE_IMAGE={python.ref}",
        *(f"--build-arg={a}" for a in image.build_args),
        "--tag",
        image.ref,
    ]
    if HOST_CA.exists():
        args.append(f"--volume={HOST_CA}:/etc/ssl/certs/ca-certificates.crt:ro")
    _run(
        buildah(*args, "-f", str(context / "Dockerfile"), str(context)),
        f"building {image.ref}",
        log,
    )


def build(image: Image, log: Path) -> None:
    if image.name == "pause":
        build_pause(image, log)
    elif image.name == "python":
        build_python(image, log)
    elif image.name == "operator":
        build_dockerfile(image, ROOT, log)
    elif image.name.startswith("example-app"):
        build_dockerfile(image, ROOT / "examples" / "app", log)
    else:  # pragma: no cover
        raise ImageError(f"no recipe for image {image.name}")
    _export(image, log)
    # buildah's storage is only a step on the way to the tarball: keep it small.
    subprocess.run(buildah("rmi", image.ref), capture_output=True, check=False)


def ensure(names: list[str] | None = None) -> dict[str, Image]:
    """Builds the images that are missing (with what they are built from); returns all."""
    images = plan()
    wanted = names or list(images)
    todo: list[Image] = []

    def need(name: str) -> None:
        img = images[name]
        if img.built or img in todo:
            return
        for dep in img.deps:
            need(dep)
        todo.append(img)

    for n in wanted:
        if n not in images:
            raise ImageError(f"unknown image {n} (known: {', '.join(images)})")
        need(n)
    if todo:
        preflight()
    log = images_dir() / "build.log"
    for img in todo:
        images_dir().mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        _log(f"building {img.ref} (log {log})")
        build(img, log)
        size = img.tarball.stat().st_size / 2**20
        _log(f"built {img.ref} in {time.monotonic() - start:.0f}s ({size:.0f} MiB)")
    _prune(images)
    return images


def _prune(current: dict[str, Image]) -> None:
    """Removes tarballs of older keys: the cache holds what this checkout builds."""
    keep = {i.tarball.name for i in current.values()}
    for t in images_dir().glob("*.tar"):
        if t.name not in keep:
            t.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testenv.images")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("names", nargs="*")
    sub.add_parser("list")
    args = parser.parse_args(argv)
    try:
        images = ensure(args.names) if args.cmd == "build" else plan()
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for img in images.values():
        state = f"{img.tarball.stat().st_size / 2**20:.0f} MiB" if img.built else "not built"
        print(f"{img.name:12} {img.ref:60} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
