"""Download, check and unpack a dataset's release archives (the ATRC tarballs of PASCAL-Context and
NYUD-v2; the official Cityscapes zips, which sit behind a login and are unpacked from --archive).

    python -m data.download --dataset pascal|nyud|all --root DB_ROOT [--url URL ...] [--sha256 HEX]
    python -m data.download --dataset pascal --root DB_ROOT --archive PASCALContext.tar.gz   # offline
    python -m data.download --dataset cityscapes --root DB_ROOT --archive leftImg8bit_trainvaltest.zip \
        --archive gtFine_trainvaltest.zip --archive disparity_trainvaltest.zip --archive camera_trainvaltest.zip

Why a command and not `wget && tar xzf`: the tarballs are several GB on university servers that drop
connections, and a half-finished `tar` leaves a folder that looks like a dataset until a worker hits the
first missing file hours later. Here:

  * the download goes to `DB_ROOT/<tarball>.part` and is resumed with an HTTP Range request after an
    interruption (the same command again continues it; If-Range restarts it when the file changed);
    transient failures are retried with exponential backoff; a progress bar shows bytes, speed and ETA;
  * the result must have the size the server announced (Content-Length / Content-Range) and, with
    `--sha256`, that digest; only then is it renamed to `DB_ROOT/<tarball>`;
  * mirrors are tried in order (the table below, or the `--url` flags): a 404 or an HTML page (a login
    or "confirm download" page) moves on to the next one;
  * extraction goes through data/safe_tar.py (tar or zip; no path may leave DB_ROOT, no device files,
    size caps) into a hidden temporary folder inside DB_ROOT, every archive of the dataset into the same
    one; the cheap checks of data/verify.py run on it, and only then is it renamed to
    `DB_ROOT/<dataset folder>` in one atomic step. An interrupted extraction leaves only the hidden
    folder, which the next run removes.

What the command knows of a dataset (its archives, their mirrors, where to log in) is the `archives` and
`login_hint` of its DatasetSpec, written in the dataset's own module (data/datasets/<name>.py).

Only this command touches the network; nothing else in the framework does at run time.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .common import DatasetError, exclusive_lock
from .datasets import cli_names, dataset_names, dataset_spec, spec_by_cli_name


@dataclass(frozen=True)
class Source:
    """One place an archive can be fetched from, and who publishes that link."""

    url: str
    origin: str


def archives_of(db_name: str) -> tuple:
    """The Archive records of a registered dataset (data/registry.py)."""
    return dataset_spec(db_name).archives


def sources_of(archive) -> list:
    """The Source list of one Archive record, in the order they are tried."""
    return [Source(url, origin) for url, origin in archive.sources]


def downloadable(db_name: str) -> bool:
    """True when every archive of the dataset has a public source (no login needed)."""
    archives = archives_of(db_name)
    return bool(archives) and all(a.sources for a in archives)


USER_AGENT = "taskdiffusion-data-download/1.0 (Python urllib)"
CHUNK = 1 << 20
MAX_BACKOFF_S = 60.0


class DownloadError(DatasetError):
    """A download or installation step failed; the message is one line and says what to do."""


class _Transient(Exception):
    """Worth retrying after a pause (connection lost, timeout, 5xx)."""


class _MirrorFailed(Exception):
    """This mirror cannot deliver the file (404, HTML page, wrong size or digest): try the next one."""


def _retryable_http(code: int) -> bool:
    return code in (408, 425, 429) or code >= 500


def _opener():
    """urllib with a cookie jar: some file hosts set a cookie on the redirect to the actual file."""
    from http.cookiejar import CookieJar

    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_meta(path: Path, meta: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, path)


def _discard(part: Path, meta_path: Path) -> None:
    """Forget a partial download that can no longer be trusted (the next attempt starts over)."""
    part.unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)


def _content_range(value: str | None):
    """'bytes a-b/total' -> (a, total or None); 'bytes */total' -> (None, total); else (None, None)."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    total = int(total) if total.strip().isdigit() else None
    start = int(span.split("-")[0]) if span[:1].isdigit() else None
    return start, total


def sha256_of(path: Path, progress: bool = True) -> str:
    """Hex SHA-256 of a file, with a progress bar (hashing a few GB takes a while)."""
    h = hashlib.sha256()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f"sha256 {path.name}")
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return h.hexdigest()


class Fetcher:
    """Resumable, retrying download of one URL into `dest` (via `dest.part` and `dest.part.json`)."""

    def __init__(self, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0, progress: bool = True,
                 log=print):
        self.retries, self.backoff, self.timeout = int(retries), float(backoff), float(timeout)
        self.progress, self.log = progress, log
        self.opener = _opener()

    # one mirror -----------------------------------------------------------------------------------
    def fetch(self, url: str, dest: Path, sha256: str | None = None) -> Path:
        """Download `url` to `dest`; raises _MirrorFailed with a short reason."""
        part = dest.with_name(dest.name + ".part")
        meta_path = dest.with_name(dest.name + ".part.json")
        failures = 0
        best = part.stat().st_size if part.exists() else 0
        while True:
            try:
                if self._attempt(url, part, meta_path):
                    break
                raise _Transient("the connection ended before the announced size")
            except _Transient as err:
                got = part.stat().st_size if part.exists() else 0
                # new bytes beyond the best so far reset the count; a server that keeps failing at the
                # same place (or forces restarts) still runs out of retries
                failures = 1 if got > best else failures + 1
                best = max(best, got)
                if failures > self.retries:
                    raise _MirrorFailed(f"{err} (gave up after {self.retries} retries)") from None
                pause = min(self.backoff * 2 ** (failures - 1), MAX_BACKOFF_S)
                self.log(f"  {err}; retry {failures}/{self.retries} in {pause:.1f} s"
                         + (f" (resuming at byte {got})" if got else ""))
                time.sleep(pause)
        if sha256:
            digest = sha256_of(part, self.progress)
            if digest.lower() != sha256.lower():
                _discard(part, meta_path)
                raise _MirrorFailed(f"sha256 mismatch: expected {sha256.lower()}, got {digest} (file removed)")
        os.replace(part, dest)
        meta_path.unlink(missing_ok=True)
        return dest

    def _request(self, url: str, offset: int, meta: dict):
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if meta.get("validator"):
                headers["If-Range"] = meta["validator"]
        try:
            return self.opener.open(urllib.request.Request(url, headers=headers), timeout=self.timeout), None
        except urllib.error.HTTPError as err:
            if err.code == 416:
                return None, err
            if _retryable_http(err.code):
                raise _Transient(f"HTTP {err.code} {err.reason}") from None
            raise _MirrorFailed(f"HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, (socket.gaierror, ssl.SSLError)):  # unknown host, bad certificate
                raise _MirrorFailed(f"{type(reason).__name__}: {reason}") from None
            if isinstance(reason, OSError):  # refused, reset, timed out: may pass
                raise _Transient(f"{type(reason).__name__}: {reason}") from None
            raise _MirrorFailed(str(reason)) from None
        except (http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout) as err:
            raise _Transient(f"{type(err).__name__}: {err}") from None
        except ValueError as err:  # not a URL urllib understands
            raise _MirrorFailed(str(err)) from None

    def _attempt(self, url: str, part: Path, meta_path: Path) -> bool:
        """One request; True when `part` is complete. Raises _Transient / _MirrorFailed."""
        meta = _read_meta(meta_path)
        if part.exists() and meta.get("url") != url:  # a leftover of another mirror or file: start over
            part.unlink()
            meta = {}
        offset = part.stat().st_size if part.exists() else 0
        resp, refused = self._request(url, offset, meta)
        if refused is not None:  # 416: nothing left to send at this offset
            _, total = _content_range(refused.headers.get("Content-Range"))
            refused.close()
            known = meta.get("total")
            if total is not None and known is not None and total != known:
                _discard(part, meta_path)
                raise _MirrorFailed(f"size mismatch: the server first announced {known} bytes, now {total} "
                                    f"(partial file removed)")
            if total is not None and total == offset:
                return True
            part.unlink(missing_ok=True)
            raise _Transient(f"the server refused to resume at byte {offset} (HTTP 416); starting over")
        with resp:
            status = getattr(resp, "status", 200)
            ctype = (resp.headers.get("Content-Type") or "").lower()
            if ctype.startswith("text/html"):
                raise _MirrorFailed("the server sent a web page, not the tarball (a login or confirmation "
                                    "page?); download it in a browser and pass it with --archive")
            if status == 206:
                start, total = _content_range(resp.headers.get("Content-Range"))
                if start != offset:
                    part.unlink(missing_ok=True)
                    raise _Transient(f"the server resumed at byte {start}, not {offset}; starting over")
                if meta.get("total") is not None and total is not None and total != meta["total"]:
                    _discard(part, meta_path)
                    raise _MirrorFailed(f"size mismatch: the server first announced {meta['total']} bytes, "
                                        f"now {total} (partial file removed)")
                if meta.get("total") is None and total is not None:
                    meta["total"] = total
                    _write_meta(meta_path, meta)
                mode = "ab"
            else:  # 200: the whole file (first request, Range ignored, or If-Range saw a changed file)
                if offset:
                    self.log(f"  the server sent the whole file instead of resuming at byte {offset}; "
                             f"starting over")
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                offset, mode = 0, "wb"
                meta = {"url": url, "total": total,
                        "validator": resp.headers.get("ETag") or resp.headers.get("Last-Modified")}
                _write_meta(meta_path, meta)
            total = meta.get("total") if meta.get("total") is not None else total
            self._stream(resp, part, mode, offset, total)
        size = part.stat().st_size
        if total is None:
            self.log("  the server did not announce a size: only --sha256 can confirm the file is complete")
            return True
        if size > total:
            _discard(part, meta_path)
            raise _MirrorFailed(f"size mismatch: received {size} bytes, the server announced {total} (file removed)")
        return size == total

    def _stream(self, resp, part: Path, mode: str, offset: int, total) -> None:
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=part.name[:-len(".part")], miniters=1)
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout,
                            OSError) as err:
                        out.flush()
                        raise _Transient(f"{type(err).__name__}: {err}") from None
                    if not chunk:
                        break
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()


def _login_error(db_name: str) -> DownloadError:
    spec = dataset_spec(db_name)
    files = " ".join(f"--archive {a.file}" for a in spec.archives)
    return DownloadError(f"{db_name}'s archives cannot be downloaded without an account: {spec.login_hint} "
                         f"Then run: python -m data.download --dataset {spec.cli_name} --root DB_ROOT {files}")


def download(db_name: str, root: Path, urls=None, sha256: str | None = None, fetcher: Fetcher | None = None,
             log=print, archive=None) -> Path:
    """`root/<archive file>`, downloaded from the first mirror that delivers it (skipped when already there).

    archive: the dataset's Archive record to fetch (default: its only one)."""
    archives = archives_of(db_name)
    if archive is None:
        if len(archives) != 1:
            raise DownloadError(f"{db_name} has {len(archives)} archives; name the one to download")
        archive = archives[0]
    if not archive.sources and not urls:
        raise _login_error(db_name)
    dest = Path(root) / archive.file
    if dest.is_file():
        log(f"{dest} is already downloaded")
        if sha256:
            digest = sha256_of(dest, fetcher.progress if fetcher else True)
            if digest.lower() != sha256.lower():
                raise DownloadError(f"sha256 mismatch {dest}: expected {sha256.lower()}, got {digest}; "
                                    f"delete the file and run the command again")
        return dest
    fetcher = fetcher or Fetcher(log=log)
    urls = list(urls) if urls else [s.url for s in sources_of(archive)]
    reasons = []
    for url in urls:
        log(f"downloading {dest.name} from {url}")
        try:
            return fetcher.fetch(url, dest, sha256)
        except _MirrorFailed as err:
            log(f"  failed: {err}")
            reasons.append(f"{url}: {err}")
    raise DownloadError(f"cannot download {dest.name}: {' | '.join(reasons)}; pass a working mirror with --url, "
                        f"or fetch the file yourself and use --archive FILE")


def _dataset_folder(tmp: Path, folder: str, archive) -> Path:
    """`tmp/<folder>` holding the dataset of a fresh extraction, whatever the archive's top level was:
    `<folder>/` (the ATRC tarballs), a single folder of another name, or the layout at the top."""
    target = tmp / folder
    if target.is_symlink():
        raise DownloadError(f"archive {archive}: its top folder {folder} is a symlink; use the ATRC release")
    if target.is_dir():
        return target
    entries = list(tmp.iterdir())
    if not entries:
        raise DownloadError(f"archive {archive}: holds no files; download it again")
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        os.replace(entries[0], target)
        return target
    staging = tmp / ".staging"
    staging.mkdir()
    for entry in entries:
        os.replace(entry, staging / entry.name)
    os.replace(staging, target)
    return target


def install(db_name: str, root: Path, archive, force: bool = False, check: bool = True,
            progress: bool = True, log=print, **limits) -> Path:
    """Unpack `archive` (a path, or a list of paths: all are unpacked into one folder) into
    `root/<dataset folder>` atomically (see the module docstring)."""
    from .safe_tar import safe_extract
    from .verify import format_report, verify_dataset

    root, folder = Path(root), dataset_spec(db_name).folder
    final = root / folder
    tmp = root / f".{folder}.extract-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        parts = [Path(a) for a in archive] if isinstance(archive, (list, tuple)) else [Path(archive)]
        files = size = 0
        for part in parts:
            stats = safe_extract(part, tmp, progress=progress, desc=f"extract {part.name}", **limits)
            files, size = files + stats.files, size + stats.bytes
        archive = ", ".join(str(p) for p in parts)  # for the messages below
        found = _dataset_folder(tmp, folder, archive)
        log(f"extracted {files} files ({size / 2 ** 20:.1f} MiB)")
        if check:
            log("checking the unpacked folder before installing it:")
            report = verify_dataset(db_name, found, deep=False, progress=False)
            log(format_report(report))
            if report.errors:
                raise DownloadError(
                    f"the unpacked archive {archive} does not have the {db_name} layout the readers need "
                    f"({len(report.errors)} error(s), listed above); nothing was installed - use the ATRC "
                    f"release, or --no-check to install it anyway")
        old = None
        if final.exists() or final.is_symlink():
            if not force:
                raise DownloadError(f"dataset folder {final} already exists; pass --force to replace it")
            old = root / f".{folder}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(found, final)  # the dataset appears complete or not at all
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _remove_leftovers(root: Path, folder: str, log) -> None:
    """Hidden folders of an extraction that was killed (we hold the lock, so none is in use)."""
    for stale in list(root.glob(f".{folder}.extract-*")) + list(root.glob(f".{folder}.old-*")):
        log(f"removing the leftover of an interrupted run: {stale}")
        shutil.rmtree(stale, ignore_errors=True)


def get_dataset(db_name: str, root, urls=None, sha256=None, archive=None, force=False, keep_archive=False,
                check=True, fetcher: Fetcher | None = None, progress=True, log=print, **limits) -> Path:
    """Download (or take `archive`) and install one dataset under `root`; returns the dataset folder."""
    root = Path(os.path.expanduser(str(root)))
    folder = dataset_spec(db_name).folder
    final = root / folder
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create --root {root}: {err.strerror}; choose a writable folder") from None
    if final.exists() and not force:
        log(f"{final} already exists: nothing to do (check it with `python -m data.verify --dataset "
            f"{dataset_spec(db_name).cli_name} --root {root}`, or pass --force to download it again)")
        return final
    with exclusive_lock(root / f".{folder}.lock"):
        _remove_leftovers(root, folder, log)
        if archive is not None:
            given = [archive] if isinstance(archive, (str, os.PathLike)) else list(archive)
            tarball = [Path(os.path.expanduser(str(a))) for a in given]
            for a in tarball:
                if not a.is_file():
                    raise DownloadError(f"archive {a} (--archive): not a file; give the downloaded archive")
            if sha256 and sha256_of(tarball[0], progress).lower() != sha256.lower():
                raise DownloadError(f"sha256 mismatch {tarball[0]}: the file is not the expected archive; "
                                    f"download it again")
            _name_check(db_name, tarball, log)
            tarball, ours = (tarball[0] if len(tarball) == 1 else tarball), False
        else:
            if not downloadable(db_name) and not urls:
                raise _login_error(db_name)
            fetcher = fetcher or Fetcher(progress=progress, log=log)
            tarball, ours = download(db_name, root, urls, sha256, fetcher, log), True
        from .safe_tar import CorruptArchiveError

        try:
            path = install(db_name, root, tarball, force=force, check=check, progress=progress, log=log, **limits)
        except CorruptArchiveError:
            if ours:  # a damaged download must not be "already downloaded" on the next run
                bad = tarball.with_name(tarball.name + ".corrupt")
                os.replace(tarball, bad)
                log(f"moved the damaged download to {bad}; the next run downloads it again")
            raise
        if ours and not keep_archive:
            tarball.unlink(missing_ok=True)
    log(f"installed {path}")
    return path


def _name_check(db_name: str, paths, log) -> None:
    """Say which of the dataset's archives were not given (the layout check after unpacking decides)."""
    want = [a.file for a in archives_of(db_name)]
    if len(want) > 1:
        missing = [f for f in want if f not in {p.name for p in paths}]
        if missing:
            log(f"note: {db_name} is released as {len(want)} archives; not given (by file name): "
                f"{', '.join(missing)}")


def _sources_epilog() -> str:
    lines = ["built-in sources (tried in order; --url replaces them):"]
    for db in dataset_names():
        spec = dataset_spec(db)
        for a in spec.archives:
            for s in sources_of(a):
                lines.append(f"  {a.file}: {s.url}  [{s.origin}]")
            if not a.sources:
                lines.append(f"  {a.file}: login needed, unpack it with --archive ({spec.cli_name})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.download", description=__doc__.split("\n\n")[0],
                                 epilog=_sources_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=list(cli_names("archives")) + ["all"], required=True,
                    help="all: every dataset that needs no login (pascal, nyud)")
    ap.add_argument("--root", required=True, help="db_root: the dataset folders (PASCALContext/, NYUDv2/, "
                                                  "cityscapes/) are created inside it")
    ap.add_argument("--url", action="append", default=None, metavar="URL",
                    help="a mirror of the tarball (repeat for several, tried in order; one dataset only)")
    ap.add_argument("--sha256", default=None, help="expected SHA-256 of the tarball (one dataset only)")
    ap.add_argument("--archive", action="append", default=None, metavar="FILE",
                    help="unpack this already downloaded archive instead of downloading (one dataset only; "
                         "repeat for a dataset released as several archives, e.g. Cityscapes' four zips)")
    ap.add_argument("--force", action="store_true", help="replace an existing dataset folder")
    ap.add_argument("--keep-archive", action="store_true", help="keep the downloaded tarball after unpacking")
    ap.add_argument("--no-check", action="store_true",
                    help="install even when the unpacked layout fails the checks of data.verify")
    ap.add_argument("--retries", type=int, default=5, help="retries per mirror after a transient failure")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a retry")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    names = ([db for db in dataset_names() if downloadable(db)] if args.dataset == "all"
             else [spec_by_cli_name(args.dataset).name])
    for flag in ("url", "sha256", "archive"):
        if getattr(args, flag) and len(names) > 1:
            print(f"error: --{flag} with --dataset all: ambiguous, it names one file; run the command once per "
                  f"dataset", file=sys.stderr)
            return 2
    if args.url and len(archives_of(names[0])) > 1:
        print(f"error: --url with --dataset {args.dataset}: ambiguous, the dataset has several archives; "
              f"download them yourself and pass each with --archive", file=sys.stderr)
        return 2
    if args.sha256 and (len(args.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in args.sha256)):
        print(f"error: --sha256 {args.sha256!r}: not 64 hex digits; give the tarball's SHA-256", file=sys.stderr)
        return 2
    if args.retries < 0 or args.timeout <= 0:
        print("error: --retries/--timeout: must be >= 0 / > 0; use the defaults", file=sys.stderr)
        return 2
    fetcher = Fetcher(retries=args.retries, timeout=args.timeout, progress=not args.no_progress)
    try:
        for db in names:
            get_dataset(db, args.root, urls=args.url, sha256=args.sha256, archive=args.archive, force=args.force,
                        keep_archive=args.keep_archive, check=not args.no_check, fetcher=fetcher,
                        progress=not args.no_progress)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {err.filename or args.root}: {err.strerror or err}; check free space and permissions "
              f"under --root", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to resume the download", file=sys.stderr)
        return 130
    for db in names:
        print(f"check it: python -m data.verify --dataset {dataset_spec(db).cli_name} --root {args.root} --deep")
    return 0


if __name__ == "__main__":
    sys.exit(main())
