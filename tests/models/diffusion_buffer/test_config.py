"""The time contract 0 < t_eps < t_max < 1 and the other config checks."""

import pytest

import contracts
from models.diffusion_buffer import DiffusionBufferConfig, DiffusionBufferError


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"t_eps": 0.0}, r"'t_eps' = 0.0 violates the time contract.*expected t_eps > 0"),
        ({"t_eps": -0.1}, r"'t_eps' = -0.1 violates"),
        ({"t_eps": 0.5, "t_max": 0.4}, r"'t_eps' = 0.5.*expected t_eps < t_max = 0.4"),
        ({"t_max": 1.5}, r"'t_max' = 1.5 violates.*expected t_max < 1"),
        ({"t_max": 1.0}, r"'t_max' = 1.0.*σ\(1\) = 0"),
    ],
)
def test_time_contract_refuses(kw, match):
    with pytest.raises(contracts.ContractError, match=match) as ei:
        DiffusionBufferConfig(**kw)
    assert ei.value.argument in ("t_eps", "t_max")


def test_time_contract_off_accepts():
    with contracts.mode("off"):
        cfg = DiffusionBufferConfig(t_eps=0.0)
    assert cfg.t_eps == 0.0


def test_other_checks():
    with pytest.raises(DiffusionBufferError, match="buffer_size=0 must be >= 1"):
        DiffusionBufferConfig(buffer_size=0)
    with pytest.raises(DiffusionBufferError, match="amp_dtype='half'; valid"):
        DiffusionBufferConfig(amp_dtype="half")
