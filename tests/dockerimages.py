"""Local test images for the Docker Engine, built from the host's static busybox (no registry is reachable).

`shoal-busybox:1` and `shoal-busybox:2` are a root filesystem holding /bin/busybox, a link to it for every applet
(sh, sleep, httpd, echo, cat, true, false, …), /etc/passwd and /etc/group (root, nobody), /tmp, and
/etc/shoal-image holding the tag ("1" or "2"): the two tags differ in that file, so a rolling update between them
is visible inside the container. Both carry CMD ["sh"] and the label `shoal.test.image=busybox`.

`ensure_busybox_images()` builds them once: it is idempotent and safe when several pytest workers (or sessions)
call it at once, since the check and the build happen under an exclusive lock on a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import docker
import docker.errors

BUSYBOX = Path(os.environ.get("SHOAL_TEST_BUSYBOX", "/bin/busybox"))
REPOSITORY = "shoal-busybox"
TAGS = ("1", "2")
IMAGE_1 = f"{REPOSITORY}:1"
IMAGE_2 = f"{REPOSITORY}:2"
IMAGE_LABEL = "shoal.test.image=busybox"
LOCK_FILE = Path(tempfile.gettempdir()) / "shoal-dockerimages.lock"
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = b"root:x:0:\nnogroup:x:65534:\n"


class ImagesUnavailable(Exception):
    """The images cannot be built here (no Docker Engine, or no static busybox)."""


def _applets() -> list[str]:
    listed = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True).stdout
    return [name for name in listed.split() if name and "/" not in name and name != "busybox"]


def _add_file(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    archive.addfile(info, io.BytesIO(data))


def _add_dir(archive: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    archive.addfile(info)


def rootfs_tar(tag: str) -> bytes:
    """The root filesystem of `shoal-busybox:<tag>` as a tar archive."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for folder in ("bin", "etc", "root", "www"):
            _add_dir(archive, folder)
        _add_dir(archive, "tmp", 0o1777)
        _add_file(archive, "bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for applet in _applets():
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            archive.addfile(link)
        _add_file(archive, "etc/passwd", PASSWD)
        _add_file(archive, "etc/group", GROUP)
        _add_file(archive, "etc/shoal-image", f"{tag}\n".encode())
        _add_file(archive, "www/index.html", f"shoal-busybox {tag}\n".encode())
    return buffer.getvalue()


def _has_image(client: docker.DockerClient, reference: str) -> bool:
    try:
        client.api.inspect_image(reference)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_images(client: docker.DockerClient) -> None:
    """Import the images that are missing (under the lock: another process may be importing them too)."""
    LOCK_FILE.touch(exist_ok=True)
    with open(LOCK_FILE, "r+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for tag in TAGS:
                if _has_image(client, f"{REPOSITORY}:{tag}"):
                    continue
                client.api.import_image_from_data(rootfs_tar(tag), repository=REPOSITORY, tag=tag,
                                                  changes=['CMD ["sh"]', f"LABEL {IMAGE_LABEL}"])
                if not _has_image(client, f"{REPOSITORY}:{tag}"):
                    raise ImagesUnavailable(f"importing {REPOSITORY}:{tag} left no image")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@functools.cache
def ensure_busybox_images(base_url: str | None = None) -> tuple[str, str]:
    """Build `shoal-busybox:1` and `:2` unless the engine has them; returns their names. Raises ImagesUnavailable
    (with the reason) when no engine answers or there is no static busybox."""
    if not BUSYBOX.is_file():
        raise ImagesUnavailable(f"{BUSYBOX} is missing (install busybox-static)")
    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env(version="auto")
        try:
            client.ping()
            build_images(client)
        finally:
            client.close()
    except (docker.errors.DockerException, OSError) as exc:
        raise ImagesUnavailable(f"no Docker Engine: {exc}") from exc
    return IMAGE_1, IMAGE_2


def remove_images(client: docker.DockerClient) -> None:
    """Delete both images (for a clean machine; tests leave them, as other tests of the session share them)."""
    for tag in TAGS:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.api.remove_image(f"{REPOSITORY}:{tag}", force=True)


if __name__ == "__main__":
    # `python -m tests.dockerimages`: build the images (e.g. for the example in examples/app).
    print(", ".join(ensure_busybox_images()))
