"""bench/cases/attention.py: the masks' pair counts, the document ids, and one case end to end on the CPU."""

import pytest
import torch

from bench.cases.attention import Unavailable, attention_case, attention_flops, doc_ids, window_pairs


@pytest.mark.parametrize("T,w", [(16, 1), (16, 5), (16, 16), (16, 40), (37, 8)])
def test_window_pairs_counts_the_reference_mask(T, w):
    from kernels.reference import attention_mask

    assert window_pairs(T, w) == int(attention_mask(T, causal=True, window=w).sum())


def test_doc_ids_cover_the_batch_in_documents():
    ids, lengths = doc_ids(3, 256, "cpu", shortest=8, longest=256)
    assert ids.shape == (3, 256) and sum(lengths) == 3 * 256
    assert bool((ids[:, 1:] >= ids[:, :-1]).all())
    assert sum(len(row.unique()) for row in ids) == len(lengths)


@pytest.mark.parametrize("mask", ["causal", "window", "docs"])
def test_a_case_runs_forward_and_backward_and_counts_only_the_masked_work(mask):
    B, T, H, D = 2, 64, 2, 16
    fwd, flops, _, fields = attention_case("sdpa", B, T, H, D, device="cpu", dtype=torch.float32, backward=False,
                                        mask=mask, doc_lengths=(8, 64))
    assert fwd().shape == (B, T, H, D) and fields["shape"] == [B, T, H, D] and fields["backend"] == "sdpa"
    causal = attention_flops(B, T, H, D)
    assert (flops == causal) if mask == "causal" else (0 < flops < causal)
    bwd, bwd_flops, _, _ = attention_case("sdpa", B, T, H, D, device="cpu", dtype=torch.float32, backward=True,
                                       mask=mask, doc_lengths=(8, 64))
    bwd()
    assert bwd_flops == pytest.approx(2.5 * flops) if mask != "docs" else bwd_flops > flops


def test_a_backend_that_cannot_run_says_why():
    with pytest.raises(Unavailable, match="flex: torch has no flex_attention backward on the CPU"):
        attention_case("flex", 1, 16, 1, 16, device="cpu", dtype=torch.float32, backward=True)
    with pytest.raises(ValueError, match="mask must be"):
        attention_case("sdpa", 1, 16, 1, 16, device="cpu", dtype=torch.float32, backward=False, mask="sliding")
