"""The block-wise quantizer: maps, nearest-code rounding, per-block error bounds, 4-bit packing."""

import importlib.util

import pytest
import torch

from slimtrain.optim.lowbit import codec as quant

MAPS = [("signed", 8), ("unsigned", 8), ("signed", 4), ("linear", 4)]


def paper_map(kind, bits):
    """The dynamic tree map written from the paper's description, in float64: decade e carries
    2**e equal cells of [0.1, 1]·10**(e-F+1) (F magnitude bits) represented by their centres.
    Our unsigned map has half the smallest code where the paper has 0 (quant.py says why)."""
    F = bits - 1 if kind == "signed" else bits
    first = 0 if kind == "signed" else 1
    smallest = 10.0 ** (first - F + 1) * (0.1 + 0.9 * 0.5 / 2**first)
    values = [0.0 if kind == "signed" else smallest / 2, 1.0]
    for e in range(first, F):
        centres = [10.0 ** (e - F + 1) * (0.1 + 0.9 * (j + 0.5) / 2**e) for j in range(2**e)]
        values += centres + ([-c for c in centres] if kind == "signed" else [])
    return torch.tensor(sorted(values), dtype=torch.float64)


def worst_error(kind, bits):
    """Largest distance from a point of the map's range to its nearest code: half the widest gap,
    or an end of the range ([-1, 1] or [0, 1]) to the code nearest it (the signed map has no -1;
    the linear one no 0)."""
    table = quant.code_table(kind, bits).double().sort().values
    low = -1.0 if kind == "signed" else 0.0
    return max(((table[1:] - table[:-1]) / 2).max().item(), table[0].item() - low,
               1.0 - table[-1].item())


def test_worst_errors_are_the_maps_resolution():
    assert worst_error("signed", 8) == pytest.approx(0.9 / 128, rel=1e-3)   # 64 codes in [0.1, 1]
    assert worst_error("unsigned", 8) == pytest.approx(0.9 / 256, rel=1e-3)  # 128 codes
    assert worst_error("signed", 4) == pytest.approx(0.9 / 8, rel=1e-3)
    assert worst_error("linear", 4) == 1 / 16


@pytest.mark.parametrize("kind,bits", MAPS[:3])
def test_dynamic_maps_are_the_papers(kind, bits):
    table = quant.code_table(kind, bits).double().sort().values
    assert table.numel() == 2**bits and table.unique().numel() == 2**bits
    torch.testing.assert_close(table, paper_map(kind, bits), rtol=2e-5, atol=0)


@pytest.mark.skipif(not importlib.util.find_spec("bitsandbytes"), reason="bitsandbytes not installed")
@pytest.mark.parametrize("signed", [True, False])
def test_8bit_maps_match_bitsandbytes(signed):
    from bitsandbytes.functional import create_dynamic_map

    ours = quant.code_table("signed" if signed else "unsigned", 8).sort().values
    theirs = create_dynamic_map(signed)
    if not signed:  # the one departure: no zero in the second-moment map
        assert theirs[0] == 0 and ours[0].item() == pytest.approx(theirs[1].item() / 2, rel=2e-5)
        ours, theirs = ours[1:], theirs[1:]
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=0)


def test_second_moment_maps_have_no_zero():
    assert quant.code_table("linear", 4).min() == 1 / 16 and quant.code_table("linear", 4).max() == 1
    assert quant.code_table("unsigned", 8).min() > 0


@pytest.mark.parametrize("kind,bits", MAPS)
def test_encode_picks_the_nearest_code(kind, bits):
    table = quant.code_table(kind, bits).double()
    g = torch.Generator().manual_seed(0)
    low = -1.0 if kind == "signed" else 0.0
    y = torch.cat([torch.rand(50_000, generator=g) * (1 - low) + low,
                   torch.rand(5_000, generator=g) * 1e-4 * (1 if low == 0 else 2) - 1e-4 * (low != 0),
                   table.float(),  # every code maps to itself
                   torch.tensor([0.0, 1.0, low, 1e-12])])
    codes = quant.encode(y, kind, bits).long()
    assert torch.equal(quant.decode(codes, kind, bits), table[codes].float())
    error = (y.double() - table[codes]).abs()
    nearest = (y.double()[:, None] - table[None, :]).abs().min(dim=1).values
    assert (error - nearest).max() <= 1e-7  # exact ties may go either way
    assert torch.equal(table[quant.encode(table.float(), kind, bits).long()], table)


@pytest.mark.parametrize("kind,bits", MAPS)
def test_block_roundtrip_error_within_half_gap_of_each_block(kind, bits):
    B = quant.block_size(bits)
    g = torch.Generator().manual_seed(1)
    scales = torch.logspace(-8, 2, 40).unsqueeze(1)  # blocks of very different magnitudes
    x = torch.randn(40, B, generator=g) * scales
    if kind != "signed":
        x = x.abs()
    x[3] = 0.0  # an all-zero block
    codes, absmax = quant.quantize_blocks(x, kind, bits)
    assert codes.dtype == torch.uint8 and codes.shape == (40, B * bits // 8)
    assert torch.equal(absmax, x.abs().amax(dim=1))
    back = quant.dequantize_blocks(codes, absmax, kind, bits)
    assert torch.isfinite(back).all() and torch.equal(back[3], torch.zeros(B))
    per_block = (back - x).abs().amax(dim=1)
    # + one float32 ulp of absmax: the rounding of code value × absmax
    assert (per_block <= (worst_error(kind, bits) + 2**-23) * absmax).all()
    # The block's largest positive value is stored exactly (code 1.0 × absmax).
    top = x.argmax(dim=1)
    rows = torch.arange(40)
    positive = x[rows, top] == absmax
    assert torch.equal(back[rows, top][positive], x[rows, top][positive])


def test_small_values_keep_relative_precision_in_8bit():
    """The dynamic map is dense near zero: values 1e-3 × absmax keep ~7% relative precision,
    where a linear 8-bit map would round them to 0."""
    x = torch.full((1, 256), 1e-3)
    x[0, 0] = 1.0
    back = quant.dequantize_blocks(*quant.quantize_blocks(x, "signed", 8), "signed", 8)
    assert ((back[0, 1:] - 1e-3).abs() / 1e-3).max() < 0.07


def test_pack4_is_two_codes_per_byte():
    codes = torch.tensor([[1, 2, 3, 4, 15, 0]])
    packed = quant.pack4(codes)
    assert packed.dtype == torch.uint8 and packed.tolist() == [[0x12, 0x34, 0xF0]]
    assert torch.equal(quant.unpack4(packed), codes.to(torch.uint8))
    codes, _ = quant.quantize_blocks(torch.randn(3, 128), "signed", 4)
    assert codes.shape == (3, 64)


@pytest.mark.parametrize("kind,bits", MAPS)
def test_compiled_codec_equals_eager(kind, bits):
    """The codec runs under torch.compile in the fast path: same codes, same values."""
    B = quant.block_size(bits)
    x = torch.randn(6, B, generator=torch.Generator().manual_seed(2))
    if kind != "signed":
        x = x.abs()
    compiled = torch.compile(lambda t: quant.dequantize_blocks(*quant.quantize_blocks(t, kind, bits),
                                                               kind, bits), fullgraph=True)
    eager = quant.dequantize_blocks(*quant.quantize_blocks(x, kind, bits), kind, bits)
    assert torch.equal(compiled(x), eager)
