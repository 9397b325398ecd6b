"""The seed rule of the determinism contract: noise seed S + k + 2**32 * c(t)."""

from __future__ import annotations

from fractions import Fraction as F

import pytest
import torch

from edensplit.model.seeds import dyadic_index, make_noise, noise_seed


def test_dyadic_index_enumerates_by_depth():
    ts = [F(1, 2), F(1, 4), F(3, 4), F(1, 8), F(3, 8), F(5, 8), F(7, 8), F(1, 16)]
    assert [dyadic_index(t) for t in ts] == [0, 1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("t", [F(0), F(1), F(1, 3), F(2, 4) + 1])
def test_non_dyadic_or_out_of_range_times_are_refused(t):
    with pytest.raises(ValueError):
        dyadic_index(t)


@pytest.mark.parametrize("base,k,t", [(0, 0, F(1, 2)), (5, 3, F(1, 2)), (5, 3, F(3, 4)), (100, 17, F(5, 8))])
def test_noise_for_s_k_t_matches_the_formula(base, k, t):
    c = {F(1, 2): 0, F(1, 4): 1, F(3, 4): 2, F(1, 8): 3, F(3, 8): 4, F(5, 8): 5, F(7, 8): 6}[t]
    seed = noise_seed(base, k, t)
    assert seed == base + k + 2**32 * c
    expected = torch.randn((1, 12, 16), generator=torch.Generator("cpu").manual_seed(base + k + 2**32 * c))
    assert torch.equal(make_noise(seed, 12, 16), expected)


def test_a_single_pair_with_seed_s_uses_noise_seed_s():
    assert noise_seed(42, 0) == 42
