"""The frame decoder recovers every valid frame from noise and never turns a bad frame into data."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.frames import MAX_FRAME, FrameDecoder, parse_frame
from firmware_sim.serial_logger import encode_frame
from qctrace.errors import FrameError


def _frames(n: int, start_seq: int = 0) -> list[bytes]:
    return [encode_frame("logger-01", start_seq + i, 1793599200000 + 1000 * i, 4.0 + (i % 7) / 10, 60.0, i % 2,
                         3.6) for i in range(n)]


def test_one_mebibyte_of_noise_interleaved_with_frames_loses_no_valid_frame():
    rng = random.Random(1)
    frames = _frames(400)
    stream = bytearray()
    for f in frames:
        stream += bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 2600)))
        stream += f
    assert len(stream) > 500_000
    dec = FrameDecoder("logger-01")
    got = []
    pos = 0
    while pos < len(stream):  # delivered in random-sized chunks, as a UART would
        n = rng.randrange(1, 700)
        got += dec.feed(bytes(stream[pos : pos + n]))
        pos += n
    assert [g.seq for g in got] == list(range(400))
    assert sum(dec.rejected.values()) + dec.garbage_bytes > 0


@given(st.lists(st.integers(1, 60), min_size=1, max_size=40))
def test_any_split_of_the_byte_stream_gives_the_same_frames(cuts):
    data = b"".join(_frames(12))
    dec = FrameDecoder()
    got, pos = [], 0
    for c in cuts:
        got += dec.feed(data[pos : pos + c])
        pos += c
    got += dec.feed(data[pos:])
    assert [g.seq for g in got] == list(range(12))


def test_a_frame_following_garbage_with_a_dollar_sign_is_recovered():
    good = _frames(1)[0]
    dec = FrameDecoder()
    assert [f.seq for f in dec.feed(b"$$QC1,junk,*" + good)] == [0]


def test_oversized_line_is_rejected_and_bounded_then_decoding_resumes():
    dec = FrameDecoder()
    out = dec.feed(b"$" + b"A" * (10 * MAX_FRAME) + b"\r\n" + _frames(1)[0])
    assert [f.seq for f in out] == [0]
    assert dec.rejected["oversized"] >= 1
    assert len(dec._buf) == 0


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: f[:-6] + (b"0001" if f.endswith(b"*0000\r\n") else b"0000") + b"\r\n", "crc"),
        (lambda f: f.replace(b"QC1", b"QC2"), "crc"),
        (lambda f: f[:-2], "framing"),
    ],
)
def test_corrupt_frames_are_refused_with_a_reason(mutate, reason):
    with pytest.raises(FrameError) as exc:
        parse_frame(mutate(_frames(1)[0]))
    assert exc.value.reason == reason


def test_a_frame_with_a_valid_crc_but_impossible_values_is_refused():
    frame = encode_frame("logger-01", 1, 1793599200000, 4.0, 60.0, 0, 3.6).replace(b"60.0", b"160.0")
    import binascii

    body = frame[1 : frame.rfind(b"*")]
    forged = b"$" + body + b"*%04X\r\n" % binascii.crc_hqx(body, 0xFFFF)
    with pytest.raises(FrameError) as exc:
        parse_frame(forged)
    assert exc.value.reason == "range"


def test_frame_from_another_device_and_a_repeated_seq_are_refused():
    f = _frames(1)[0]
    with pytest.raises(FrameError, match="logger-02"):
        parse_frame(f, "logger-02")
    with pytest.raises(FrameError) as exc:
        parse_frame(f, "logger-01", last_seq=0)
    assert exc.value.reason == "duplicate"


def test_crc_is_crc16_ccitt_false_as_protocol_md_says():
    import binascii

    assert binascii.crc_hqx(b"123456789", 0xFFFF) == 0x29B1
    assert parse_frame(b"$QC1,logger-01,0,1793599200000,4.68,60.2,0,3.600*8FBB\r\n").temperature == 4.68


@given(st.lists(st.tuples(st.integers(0, 29), st.integers(0, 200), st.integers(1, 255)), max_size=30),
       st.lists(st.integers(1, 300), min_size=1, max_size=30))
def test_a_damaged_byte_loses_only_its_own_frame_and_never_invents_one(damage, cuts):
    """One byte changed anywhere in a frame (CRC-16 catches every burst of up to 16 bits; a "$" made
    inside a frame starts a candidate without the QC1 tag) costs exactly that frame."""
    frames = _frames(30)
    hit: dict[int, tuple[int, int]] = {}
    for idx, pos, xor in damage:
        hit.setdefault(idx, (pos % len(frames[idx]), xor))
    stream = bytearray()
    for i, f in enumerate(frames):
        b = bytearray(f)
        if i in hit:
            pos, xor = hit[i]
            b[pos] ^= xor
        stream += b
    dec = FrameDecoder("logger-01")
    got, pos = [], 0
    for c in cuts * 20:
        got += dec.feed(bytes(stream[pos:pos + c]))
        pos += c
    got += dec.feed(bytes(stream[pos:]))
    assert [g.seq for g in got] == [i for i in range(30) if i not in hit]
    originals = {f.seq: f for f in (parse_frame(x) for x in frames)}
    assert all(g == originals[g.seq] for g in got)
