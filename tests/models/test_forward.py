"""The shared forward numerics: row-blocked next-token NLL and the original-vs-pruned comparison sums."""
import pytest
import torch
import torch.nn.functional as F

from analysis.models.forward import NLL_ROWS_CPU, compare_sums, final_hidden, nll_sum, token_nll
from analysis.testing import random_tokens, tiny_loaded


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, NLL_ROWS_CPU - 1, NLL_ROWS_CPU, 3 * NLL_ROWS_CPU + 5])
def test_token_nll_is_whole_tensor_cross_entropy_row_for_row(dtype, rows):
    g = torch.Generator().manual_seed(rows)
    z = (torch.randn(rows, 3001, generator=g) * 4).to(dtype)       # logits in the model's dtype
    t = torch.randint(0, 3001, (rows,), generator=g)
    ref = F.cross_entropy(z.float(), t, reduction="none")             # the whole float32 copy at once
    got = token_nll(z, t)
    assert got.dtype == torch.float32 and torch.equal(got, ref)


def test_nll_sum_and_compare_sums_agree_with_a_hand_computation():
    lm = tiny_loaded("llama", layers=3)
    ids = random_tokens(3, 40, seed=3)
    first = 5
    with torch.inference_mode():
        h = final_hidden(lm.model, ids)
        lp = torch.log_softmax(lm.model.get_output_embeddings()(h).double(), -1)    # [B, n, vocab]
        by_hand = -lp[:, first - 1:-1].gather(-1, ids[:, first:, None]).sum()
        for chunk in (1, 7, 512):                                     # logit chunks change nothing but the order
            assert nll_sum(lm.model, h, ids, first, chunk) == pytest.approx(float(by_hand), rel=1e-6)
        h2 = h + torch.randn(h.shape, generator=torch.Generator().manual_seed(1)) * h.std()   # another stream
        lq = torch.log_softmax(lm.model.get_output_embeddings()(h2).double(), -1)
        na, nb, kl, agree = compare_sums(lm.model, h, lm.model, h2, ids, first, 7)
        sl = slice(first - 1, -1)
        assert na == pytest.approx(nll_sum(lm.model, h, ids, first, 7), rel=1e-12)
        assert nb == pytest.approx(nll_sum(lm.model, h2, ids, first, 7), rel=1e-12)
        assert kl == pytest.approx(float((lp[:, sl].exp() * (lp[:, sl] - lq[:, sl])).sum()), rel=1e-4)
        assert agree == float((lp[:, sl].argmax(-1) == lq[:, sl].argmax(-1)).sum())
        assert 0 < agree < ids.shape[0] * (ids.shape[1] - first)
