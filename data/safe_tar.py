"""Extract a (possibly hostile) tarball or zip archive so that nothing can land outside the destination folder.

Why not `tarfile.extractall`: a dataset tarball comes from a mirror we do not control, and a crafted
archive can write anywhere the user can (`../../.bashrc`, `/etc/...`), plant a symlink or hardlink that
points outside and then write through it, create device files, or fill the disk with one absurd member.
Every member is therefore checked before anything is written:

  * names must be relative, without `..` components (absolute paths and `..` are refused);
  * symlinks must be relative and stay inside the root, judged both by their text and, before any write
    through them and once more at the end, by the real path the kernel resolves;
  * hardlinks must name an already extracted regular file inside the root;
  * devices, FIFOs and other special members are refused;
  * one member may not exceed `max_member_bytes`, all members together `max_total_bytes`, and the number
    of members is capped too.

Files are created with O_EXCL | O_NOFOLLOW (never through a symlink planted under the target name), no
owner or permission bits beyond "executable" are copied, and modification times are kept (the PASCAL
reader compares the shipped part index's mtime with the .mat files'). The archive is read as a stream
(`r|*`): gzip, bzip2 and xz are decompressed once, with a progress bar over the compressed bytes.

Zip archives (the official Cityscapes releases are `*_trainvaltest.zip`) get the same rules: member names are
checked the same way, symlink entries (Unix mode bits) follow the symlink rules above, device/FIFO entries are
refused, the declared sizes and the member count are capped, files are written with O_EXCL | O_NOFOLLOW and
their modification times kept; a bad CRC or a truncated archive is a `CorruptArchiveError`.

Refusals raise `UnsafeArchiveError`, damaged archives `CorruptArchiveError`, both one-line `DatasetError`s.
The caller extracts into a fresh temporary folder and deletes it on failure (see data/download.py).
"""
from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import stat
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .common import DatasetError

GiB = 1024 ** 3
MAX_MEMBER_BYTES = 4 * GiB  # the largest file of the real releases is a few MB
MAX_TOTAL_BYTES = 256 * GiB  # both unpacked releases together are far below this
MAX_MEMBERS = 2_000_000  # PASCALContext.tar.gz holds ~70 000 members, leftImg8bit_trainvaltest.zip ~5 000
_CHUNK = 1 << 20


class UnsafeArchiveError(DatasetError):
    """A member would write outside the destination, is a special file, or is absurdly large."""


class CorruptArchiveError(DatasetError):
    """The archive cannot be decompressed or parsed (truncated download, wrong file, HTML page...)."""


@dataclass
class ExtractStats:
    """What one extraction wrote (for the summary line)."""

    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes: int = 0
    symlinks: list = field(default_factory=list)


class _CountingReader:
    """A read-only file wrapper that advances a progress bar by the compressed bytes consumed."""

    def __init__(self, raw, bar):
        self.raw, self.bar = raw, bar

    def read(self, n=-1):
        data = self.raw.read(n)
        if self.bar is not None and data:
            self.bar.update(len(data))
        return data


def _refuse(archive, member_name, reason) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"unsafe member {member_name!r} in {archive}: {reason}; refusing to extract this archive "
        f"(nothing was written outside the destination) - get the file from a trusted mirror"
    )


def member_path(archive, name: str) -> str:
    """The normalised relative path of a member name, or UnsafeArchiveError for absolute paths and '..'."""
    if not name or "\x00" in name:
        raise _refuse(archive, name, "empty or NUL-containing name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        raise _refuse(archive, name, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(archive, name, "the path contains '..' and could leave the extraction folder")
    return "/".join(parts)


def _inside(root: str, path: str) -> bool:
    """True when `path` (already real/absolute) is `root` or below it."""
    return path == root or path.startswith(root + os.sep)


def _real_parent_inside(archive, name, root: str, target: str) -> None:
    """Refuse a write whose parent folder resolves (through symlinks) outside the root."""
    parent = os.path.realpath(os.path.dirname(target))
    if not _inside(root, parent):
        raise _refuse(archive, name, f"its folder resolves to {parent}, outside the extraction folder "
                                     f"(a symlink in the archive points outside)")


def _mkdirs(archive, name, root: str, folder: str) -> None:
    """Create `folder` and its parents, checking each existing component resolves inside the root."""
    rel = os.path.relpath(folder, root)
    cur = root
    if rel == ".":
        return
    for part in rel.split(os.sep):
        cur = os.path.join(cur, part)
        if os.path.lexists(cur):
            real = os.path.realpath(cur)
            if not _inside(root, real):
                raise _refuse(archive, name, f"{cur} resolves to {real}, outside the extraction folder")
            if not os.path.isdir(real):
                raise _refuse(archive, name, f"{cur} exists and is not a folder")
        else:
            os.mkdir(cur, 0o755)


def _clear(target: str) -> None:
    """Remove a previous member of the same name (tar semantics: later members win); folders stay."""
    if os.path.lexists(target) and not (os.path.isdir(target) and not os.path.islink(target)):
        os.unlink(target)


def _check_size(archive, member, limits, stats) -> None:
    max_member, max_total, _ = limits
    if member.size > max_member:
        raise _refuse(archive, member.name, f"declares {member.size} bytes, above the per-member cap of "
                                            f"{max_member} bytes")
    if stats.bytes + member.size > max_total:
        raise _refuse(archive, member.name, f"the members would exceed the total cap of {max_total} bytes")


def _write_file(tar, archive, member, root, target, limits, stats) -> None:
    src = tar.extractfile(member)
    _write_member_stream(archive, member, target, src, limits, stats)


def _write_member_stream(archive, member, target, src, limits, stats) -> None:
    """One regular member (tar or zip) from the stream `src` (None: no data) into `target`: size caps, a
    fresh O_EXCL|O_NOFOLLOW file, never more bytes than the header declares, and a short stream reported as
    a corrupt archive."""
    _check_size(archive, member, limits, stats)
    _clear(target)
    mode = 0o755 if member.mode & 0o111 else 0o644
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while src is not None:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            if written > member.size:  # never trust the stream beyond the declared size
                raise _refuse(archive, member.name, "holds more data than its header declares")
            out.write(chunk)
    if written != member.size:
        raise CorruptArchiveError(f"corrupt archive {archive}: member {member.name!r} ends after {written} of "
                                  f"{member.size} bytes; download the file again")
    os.utime(target, (member.mtime, member.mtime))
    stats.files += 1
    stats.bytes += written


def _write_symlink(archive, member, rel, root, target, stats) -> None:
    link = member.linkname
    if not link or link.startswith("/"):
        raise _refuse(archive, member.name, f"symlink to the absolute path {link!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
    if resolved == ".." or resolved.startswith("../"):
        raise _refuse(archive, member.name, f"symlink to {link!r} points outside the extraction folder")
    _clear(target)
    os.symlink(link, target)
    real = os.path.realpath(target)
    if not _inside(root, real):
        raise _refuse(archive, member.name, f"symlink to {link!r} resolves to {real}, outside the "
                                            f"extraction folder")
    stats.symlinks.append((member.name, target))
    stats.links += 1


def _write_hardlink(archive, member, root, target, limits, stats) -> None:
    try:
        src_rel = member_path(archive, member.linkname)
    except UnsafeArchiveError:
        raise _refuse(archive, member.name, f"hardlink to {member.linkname!r}, an absolute or '..' path that "
                                            f"could leave the extraction folder") from None
    source = os.path.join(root, src_rel)
    real = os.path.realpath(source)
    if not _inside(root, real):
        raise _refuse(archive, member.name, f"hardlink to {member.linkname!r} resolves outside the "
                                            f"extraction folder")
    if os.path.islink(source) or not os.path.isfile(real):
        raise _refuse(archive, member.name, f"hardlink to {member.linkname!r}, which is not a regular file "
                                            f"extracted earlier from the archive")
    _check_size(archive, member, limits, stats)
    _clear(target)
    try:
        os.link(real, target, follow_symlinks=False)
    except OSError:  # file systems without hardlinks: a copy has the same content
        import shutil

        shutil.copyfile(real, target, follow_symlinks=False)
    stats.links += 1


def _extract_member(tar, archive, member, root, limits, stats) -> None:
    rel = member_path(archive, member.name)
    if not rel:  # "./" itself
        return
    target = os.path.join(root, *rel.split("/"))
    kind = ("folder" if member.isdir() else "file" if member.isreg() else "symlink" if member.issym()
            else "hardlink" if member.islnk() else None)
    if kind is None:
        what = ("character device" if member.ischr() else "block device" if member.isblk()
                else "FIFO" if member.isfifo() else f"special member (type {member.type!r})")
        raise _refuse(archive, member.name, f"it is a {what}")
    _mkdirs(archive, member.name, root, target if kind == "folder" else os.path.dirname(target))
    if kind == "folder":
        stats.dirs += 1
        return
    _real_parent_inside(archive, member.name, root, target)
    if kind == "file":
        _write_file(tar, archive, member, root, target, limits, stats)
    elif kind == "symlink":
        _write_symlink(archive, member, rel, root, target, stats)
    else:
        _write_hardlink(archive, member, root, target, limits, stats)


@dataclass
class _ZipMember:
    """The fields of a tar member that the shared checks read, for one zip entry."""

    name: str
    size: int
    mtime: float
    mode: int
    linkname: str = ""


def _zip_member(info: zipfile.ZipInfo) -> _ZipMember:
    mode = (info.external_attr >> 16) & 0xFFFF
    try:
        mtime = time.mktime(info.date_time + (0, 0, -1))
    except (OverflowError, ValueError):
        mtime = 0.0
    return _ZipMember(info.filename, int(info.file_size), mtime, mode)


def _write_zip_file(zf, info, archive, member, target, limits, stats) -> None:
    with zf.open(info) as src:
        _write_member_stream(archive, member, target, src, limits, stats)


def _extract_zip_member(zf, info, archive, root, limits, stats) -> None:
    member = _zip_member(info)
    rel = member_path(archive, member.name)
    if not rel:
        return
    target = os.path.join(root, *rel.split("/"))
    kind_bits = stat.S_IFMT(member.mode)
    if info.is_dir() or kind_bits == stat.S_IFDIR:
        _mkdirs(archive, member.name, root, target)
        stats.dirs += 1
        return
    if kind_bits not in (0, stat.S_IFREG, stat.S_IFLNK):
        what = ("character device" if stat.S_ISCHR(member.mode) else "block device" if stat.S_ISBLK(member.mode)
                else "FIFO" if stat.S_ISFIFO(member.mode) else f"special entry (mode {oct(member.mode)})")
        raise _refuse(archive, member.name, f"it is a {what}")
    _mkdirs(archive, member.name, root, os.path.dirname(target))
    _real_parent_inside(archive, member.name, root, target)
    if kind_bits == stat.S_IFLNK:  # a symlink entry stores its target as the data
        if member.size > 4096:
            raise _refuse(archive, member.name, "symlink entry with an absurdly long target")
        member.linkname = zf.read(info).decode("utf-8", "surrogateescape")
        _write_symlink(archive, member, rel, root, target, stats)
    else:
        _write_zip_file(zf, info, archive, member, target, limits, stats)


def _safe_extract_zip(archive, root, limits, stats, bar) -> int:
    """The zip counterpart of the tar loop of safe_extract; returns the number of entries."""
    count = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if len(infos) > limits[2]:
                raise _refuse(archive, infos[limits[2]].filename, f"the archive has more than {limits[2]} members")
            total = sum(int(i.file_size) for i in infos)
            if total > limits[1]:
                raise _refuse(archive, infos[0].filename if infos else "",
                              f"the members would exceed the total cap of {limits[1]} bytes")
            for info in infos:
                count += 1
                _extract_zip_member(zf, info, archive, root, limits, stats)
                if bar is not None:
                    bar.update(int(info.compress_size))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, lzma.LZMAError) as err:
        raise CorruptArchiveError(f"corrupt archive {archive}: {type(err).__name__}: {err} (after {count} member(s)); "
                                  f"the file is truncated or damaged - delete it and download it again") from None
    return count


def safe_extract(archive, dest, *, max_member_bytes: int = MAX_MEMBER_BYTES,
                 max_total_bytes: int = MAX_TOTAL_BYTES, max_members: int = MAX_MEMBERS,
                 progress: bool = True, desc: str | None = None) -> ExtractStats:
    """Extract `archive` (tar, tar.gz, tar.bz2, tar.xz, or zip) into the existing folder `dest`.

    Raises UnsafeArchiveError / CorruptArchiveError (one line each); the caller removes `dest` then.
    """
    archive = Path(archive)
    root = os.path.realpath(dest)
    if not os.path.isdir(root):
        raise DatasetError(f"extraction folder {dest} does not exist")
    limits = (int(max_member_bytes), int(max_total_bytes), int(max_members))
    stats = ExtractStats()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=archive.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=desc or f"extract {archive.name}")
    count = 0
    is_zip = archive.suffix.lower() == ".zip" or zipfile.is_zipfile(archive)
    try:
        if is_zip:
            count = _safe_extract_zip(archive, root, limits, stats, bar)
        else:
            count = _extract_tar(archive, root, limits, stats, bar)
    finally:
        if bar is not None:
            bar.close()
    if count == 0:
        raise CorruptArchiveError(f"corrupt archive {archive}: no members; delete it and download it again")
    for name, path in stats.symlinks:  # later members may have changed what an earlier link resolves to
        real = os.path.realpath(path)
        if not _inside(root, real):
            raise _refuse(archive, name, f"symlink resolves to {real}, outside the extraction folder")
    return stats


def _extract_tar(archive, root, limits, stats, bar) -> int:
    """The tar loop of safe_extract (streamed, any compression); returns the number of members."""
    count = 0
    try:
        with open(archive, "rb") as raw, tarfile.open(fileobj=_CountingReader(raw, bar), mode="r|*") as tar:
            for member in tar:
                count += 1
                if count > limits[2]:
                    raise _refuse(archive, member.name, f"the archive has more than {limits[2]} members")
                _extract_member(tar, archive, member, root, limits, stats)
    except (tarfile.ReadError, tarfile.CompressionError, tarfile.HeaderError, tarfile.StreamError,
            EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise CorruptArchiveError(
            f"corrupt archive {archive}: {type(err).__name__}: {err} (after {count} member(s)); "
            f"the file is truncated or not a tarball - delete it and download it again"
        ) from None
    except lzma.LZMAError as err:
        raise CorruptArchiveError(f"corrupt archive {archive}: {type(err).__name__}: {err}; delete it and "
                                  f"download it again") from None
    return count

