"""The decoding kernel of the Criteo TSV reader: a block of complete lines -> label, dense, sparse.

No Python loop over rows or fields: every tab and newline is found with numpy, the last 8 bytes of
every field are loaded as one 64-bit word, and all 8 characters are validated and decoded at once
with integer bit tricks (SWAR, "SIMD within a register"); the rare integer longer than 8
characters goes through a per-character window. :mod:`dmt.data.criteo` reads files into blocks
and explains the lines this kernel rejects.

Fields are loaded 8 bytes at a time as little-endian uint64 ending at the field's last byte, so
byte k of the word is the field's (k - 8 + len)-th character and the field sits in the top
``len`` bytes. Decoding then works on all 8 characters at once with plain integer ops.
"""

from __future__ import annotations

import numpy as np

NUM_DENSE = 13
NUM_SPARSE = 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
# Longest accepted integer field (sign + 19 digits); decoded in float64, which is exact to 2**53
# and more than precise enough for log1p in float32.
MAX_DENSE_CHARS = 20
MAX_HEX_DIGITS = 8

_DEC_LUT = np.full(256, 255, dtype=np.uint8)
_DEC_LUT[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_ZERO = ord("0")
_MINUS = ord("-")

_U = np.uint64
_ONES = _U(0x0101010101010101)
_HIGH = _U(0x8080808080808080)
_ASCII_ZEROS = _U(0x3030303030303030)
# _KEEP[L]: the top L bytes of a word, i.e. the field's own characters (L = 0..8).
_KEEP = np.array([((1 << (8 * L)) - 1) << (8 * (8 - L)) for L in range(9)], dtype=np.uint64)
PAD = 32  # bytes before a block, so windows of the first fields stay inside the buffer


def _in_range(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Per byte of ``x`` (all bytes < 0x80): 0x80 where lo <= byte <= hi, else 0."""
    ge_lo = x + _U((0x80 - lo) * 0x0101010101010101)  # bit 7 set iff byte >= lo; no carries
    gt_hi = x + _U((0x7F - hi) * 0x0101010101010101)  # bit 7 set iff byte > hi
    return ge_lo & ~gt_hi & _HIGH


def parse_block(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Parse complete lines ``padded[PAD:]`` (which ends with a newline) into arrays.

    Returns:
        The valid rows' labels (N,), dense (N, 13) and sparse (N, 26) columns, the sorted 0-based
        indices of the invalid lines, and the number of lines.
    """
    buf = padded[PAD:]
    sep = np.flatnonzero((buf == 9) | (buf == 10))  # every field end (tab or newline)
    nl_idx = np.flatnonzero(buf[sep] == 10)
    # Fields per line = separators up to and including its newline. A line with stripped
    # trailing tabs has fewer: it is rejected, never padded.
    nfields = np.diff(nl_idx, prepend=-1)
    ok = nfields == NUM_FIELDS
    sep += PAD
    # Every field starts one past the previous separator, whatever line that was on.
    starts = np.empty_like(sep)
    starts[0] = PAD
    starts[1:] = sep[:-1] + 1
    if not ok.all():
        keep = np.repeat(ok, nfields)
        sep, starts = sep[keep], starts[keep]
    ends = sep.reshape(-1, NUM_FIELDS)
    lens = ends - starts.reshape(-1, NUM_FIELDS)

    label_ch = padded[ends[:, 0] - 1]
    good = (lens[:, 0] == 1) & ((label_ch == _ZERO) | (label_ch == _ZERO + 1))
    words = np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    dense_val, dense_ok = _parse_dense(padded, words, ends[:, 1 : 1 + NUM_DENSE], lens[:, 1 : 1 + NUM_DENSE])
    sparse_val, sparse_ok = _parse_hex(words, ends[:, 1 + NUM_DENSE :], lens[:, 1 + NUM_DENSE :])
    good &= dense_ok & sparse_ok

    line_ok = ok.copy()
    line_ok[ok] = good
    if not good.all():
        label_ch, dense_val, sparse_val = label_ch[good], dense_val[good], sparse_val[good]
    labels = (label_ch - _ZERO).astype(np.float32)
    dense = np.log1p(np.maximum(dense_val, 0.0)).astype(np.float32)
    return labels, dense, sparse_val, np.flatnonzero(~line_ok), len(line_ok)


def _load(words: np.ndarray, ends: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The last 8 bytes of each field as a word, bytes before the field replaced by '0'."""
    keep = _KEEP[np.minimum(lens, 8)]
    return ((words[ends - 8] ^ _ASCII_ZEROS) & keep) ^ _ASCII_ZEROS  # field bytes, else '0'


def _parse_hex(words: np.ndarray, ends: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hex values of at most 8 digits -> (N, 26) int64 (missing -> -1) and a per-row validity mask."""
    x = _load(words, ends, lens)
    # Setting bit 5 folds 'A'-'F' onto 'a'-'f' (and nothing else onto them).
    is_hex = _in_range(x, 0x30, 0x39) | _in_range(x | _U(0x2020202020202020), 0x61, 0x66)
    ok = ((x & _HIGH) == 0) & (is_hex == _HIGH) & (lens <= MAX_HEX_DIGITS)
    # Nibble per byte ('a'/'A' have bit 6 set: low nibble + 9), then pack 8 nibbles into 32 bits,
    # first character most significant.
    v = (x & _U(0x0F0F0F0F0F0F0F0F)) + _U(9) * ((x >> _U(6)) & _ONES)
    m = _U(0x00FF00FF00FF00FF)
    v = ((v & m) << _U(4)) | ((v >> _U(8)) & m)
    m = _U(0x0000FFFF0000FFFF)
    v = ((v & m) << _U(8)) | ((v >> _U(16)) & m)
    v = ((v & _U(0xFFFFFFFF)) << _U(16)) | (v >> _U(32))
    val = v.view(np.int64)  # values < 2**32: the same numbers, no copy
    val[lens == 0] = -1
    return val, ok.all(axis=1)


def _parse_dense(
    padded: np.ndarray, words: np.ndarray, ends: np.ndarray, lens: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Decimal integers -> (N, 13) float64 values (missing -> 0) and a per-row validity mask."""
    x = _load(words, ends, lens)
    # A leading '-' is the byte at 8 - len: note it and turn it into '0'.
    shift = _U(8) * (_U(8) - np.clip(lens, 1, 8).astype(np.uint64))
    neg = (((x >> shift) & _U(0xFF)) == _U(_MINUS)) & (lens > 0)
    x ^= np.where(neg, _U(_MINUS ^ _ZERO) << shift, _U(0))
    ok = ((x & _HIGH) == 0) & (_in_range(x, 0x30, 0x39) == _HIGH) & ~(neg & (lens == 1))
    # Classic 8-digit SWAR: combine pairs, then quads, then halves.
    v = x - _ASCII_ZEROS
    v = (v * _U(10) + (v >> _U(8))) & _U(0x00FF00FF00FF00FF)
    v = (v * _U(100) + (v >> _U(16))) & _U(0x0000FFFF0000FFFF)
    v = (v * _U(10000) + (v >> _U(32))) & _U(0xFFFFFFFF)
    val = v.astype(np.float64)
    val[neg] *= -1
    long = lens > 8
    if long.any():  # rare: more than 8 characters, decoded with one window per field
        val[long], ok[long] = _parse_long_dense(padded, ends[long], lens[long])
    return val, ok.all(axis=1)


def _parse_long_dense(padded: np.ndarray, ends: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fields (1-D) of 9 to 20 characters: signed value (float64) and validity."""
    width = MAX_DENSE_CHARS
    ch = np.lib.stride_tricks.sliding_window_view(padded, width)[ends - width]
    ch[np.arange(width) < (width - np.minimum(lens, width))[:, None]] = _ZERO
    rows, first = np.arange(len(ch)), np.clip(width - lens, 0, width - 1)
    neg = ch[rows, first] == _MINUS
    ch[rows[neg], first[neg]] = _ZERO
    digits = _DEC_LUT[ch]
    ok = ~(digits > 9).any(axis=-1) & (lens <= width)
    val = digits.astype(np.float64) @ (10.0 ** np.arange(width - 1, -1, -1))
    return np.where(neg, -val, val), ok
