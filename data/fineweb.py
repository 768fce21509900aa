"""The speedrun's pre-tokenized FineWeb shards: `python -m data.prepare fineweb --train-shards N --out DIR`.

The shards (`fineweb_val_000000.bin` and `fineweb_train_000001.bin` .. N) come from the Hugging Face dataset
kjj0/fineweb10B-gpt2 through `huggingface_hub.hf_hub_download`; each header is validated. `--source` points at
another hub endpoint (a URL: a mirror, or a local test server) or at a local folder holding the same files. Shards
already in --out that validate are kept, so an interrupted download resumes.

Without a network the hub cannot be reached: that is checked first (check_reachable), so the command fails at
once with one line instead of retrying for half a minute, before it creates anything. A download that fails
removes the download cache (lock and metadata files) it created in --out, and the folders it created if they are
empty; the shards it did fetch stay for the next attempt.
"""

import os
import shutil
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from data.errors import BadOption, PrepareError
from data.shards import ShardError, read_header
from speedrun.atomic import atomic_write, missing_dirs, remove_empty

FINEWEB_REPO = "kjj0/fineweb10B-gpt2"
HUB_ENDPOINT = "https://huggingface.co"


def fineweb_filenames(train_shards: int, prefix: str = "fineweb") -> list[str]:
    """The val shard, then train shards 1..train_shards, named as in the hub repository."""
    if train_shards < 1:
        raise BadOption(f"--train-shards must be >= 1, got {train_shards}")
    return [f"{prefix}_val_{0:06d}.bin"] + [f"{prefix}_train_{i:06d}.bin" for i in range(1, train_shards + 1)]


def download_fineweb(out, *, train_shards: int, repo_id: str = FINEWEB_REPO, source: str | None = None,
                     prefix: str = "fineweb", revision: str | None = None) -> list[Path]:
    """Fetch the shards into `out` (from the hub, another endpoint URL, or a local folder) and validate them."""
    names = fineweb_filenames(train_shards, prefix)
    from_hub = source is None or source.startswith(("http://", "https://"))
    if not from_hub and not Path(source).is_dir():
        raise PrepareError(f"--source {source!r} is neither an http(s) hub endpoint nor an existing folder")
    out = Path(out)  # created once the options are known to be good
    if from_hub and not all(_valid_shard(out / name) for name in names):
        check_reachable(source)  # before anything is created: offline, fail at once
    created, cache = missing_dirs(out), out / ".cache"
    new_cache = not cache.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _download(out, names, repo_id=repo_id, source=source, revision=revision)
    except BaseException:
        if new_cache:  # huggingface_hub's lock and metadata files of the failed download
            shutil.rmtree(cache, ignore_errors=True)
        remove_empty(created)
        raise


def _valid_shard(path: Path) -> bool:
    try:
        read_header(path)
        return True
    except (OSError, ShardError):
        return False


def check_reachable(endpoint: str | None, timeout_s: float = 10.0):
    """Raise PrepareError at once when the hub endpoint cannot be reached (no network, no such host, nothing
    listening), instead of letting huggingface_hub retry for half a minute. Through a proxy, the proxy decides."""
    url = endpoint or os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        raise PrepareError(f"--source {url!r} names no host")
    if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(host):
        return
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise PrepareError(f"cannot reach {url} ({e.strerror or e}): the FineWeb shards come from the Hugging Face "
                           "hub, which needs a network; on a machine without one, copy the shards there and pass "
                           "--source FOLDER") from e


def _download(out: Path, names, *, repo_id, source, revision) -> list[Path]:
    paths = []
    for name in tqdm(names, desc=f"fineweb -> {out}", unit="shard", disable=None):
        dest = out / name
        if dest.exists():
            try:
                read_header(dest)
                paths.append(dest)
                continue  # already downloaded and valid
            except ShardError as e:
                tqdm.write(f"re-downloading {name}: {e}")
                dest.unlink()
        if source is not None and not source.startswith(("http://", "https://")):
            where = str(Path(source) / name)
            _copy_from_folder(Path(source) / name, dest)
        else:
            where = f"dataset {repo_id} at {source or 'the default Hugging Face endpoint'}"
            _hub_download(repo_id, name, out, endpoint=source, revision=revision)
        try:
            read_header(dest)
        except ShardError as e:
            raise PrepareError(f"{name} from {where} is not a valid shard: {e}") from e
        paths.append(dest)
    return paths


def _hub_download(repo_id, filename, out, *, endpoint, revision):
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise PrepareError("downloading FineWeb needs huggingface_hub: pip install -e '.[fineweb]' (or "
                           "pip install huggingface_hub), or copy shards from a folder with --source") from None

    try:
        hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset", revision=revision,
                        local_dir=out, endpoint=endpoint)
    except Exception as e:  # network, HTTP and missing-entry errors all become one clear message
        raise PrepareError(f"could not download {filename} from dataset {repo_id} at "
                           f"{endpoint or 'the default Hugging Face endpoint'}: {type(e).__name__}: {e}") from e


def _copy_from_folder(src: Path, dest: Path):
    if not src.is_file():
        raise PrepareError(f"{src} not found in the --source folder")
    with open(src, "rb") as source, atomic_write(dest) as f:
        shutil.copyfileobj(source, f)
