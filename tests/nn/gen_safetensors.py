#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Writes the safetensors fixtures of tests/nn/test_checkpoint.c.

Debian has no python3-safetensors, so the files are written here with
struct + json following the format's rules exactly: a little-endian u64
header length, a compact JSON header padded with spaces to a multiple of
8 bytes, tensors sorted as the reference writer sorts them (dtype rank
descending, then name), data little-endian and dense.

  torch.safetensors  tensors made by torch, their bytes from torch itself
                     (no metadata, as safetensors.torch.save_file writes)
  plain.safetensors  written by hand: metadata first, header keys not in
                     data order, a BF16 entry libag has no dtype for
  cnn.safetensors    the state_dict of a small torch.nn copy of the
                     fashion_mnist CNN (same layer names, fewer channels),
                     with {"format": "pt"} metadata as Hugging Face writes
  cnn_bare.safetensors  the same without metadata (save_file's default)
  cnn_io.safetensors the fixed input and labels, torch's eval and train
                     outputs, the running stats after the train forward
                     and the gradients of the cross entropy (F64 copies of
                     torch's F32 results)

Run: /usr/bin/python3 tests/nn/gen_safetensors.py tests/nn/data
"""
import json
import struct
import sys

# the reference writer's Dtype enum order (smallest alignment first)
RANK = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16",
        "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]


def serialize(entries, metadata=None):
    """entries: {name: (dtype, shape, bytes)} -> file bytes."""
    order = sorted(entries, key=lambda n: (-RANK.index(entries[n][0]), n))
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    at = 0
    data = b""
    for n in order:
        dt, shape, raw = entries[n]
        header[n] = {"dtype": dt, "shape": list(shape),
                     "data_offsets": [at, at + len(raw)]}
        at += len(raw)
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def torch_fixture():
    import torch
    ts = {
        "weight": torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.5 - 1,
        "bias": torch.tensor([1.5, -2.25], dtype=torch.float64),
        "steps": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
        "alpha.x": torch.tensor([0.1], dtype=torch.float32),
    }
    name = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
    return serialize({k: (name[t.dtype], t.shape,
                          t.contiguous().numpy().tobytes())
                      for k, t in ts.items()})


def plain_fixture():
    # a's header key comes after b's while its data comes first: I64 [2, 2]
    # then F64 [2] then BF16 [3] (1.0, -2.0, 0.5 as bfloat16)
    entries = {
        "b": ("F64", [2], struct.pack("<2d", 0.25, -8.0)),
        "a": ("I64", [2, 2], struct.pack("<4q", 1, -2, 3, 1 << 40)),
        "h": ("BF16", [3], struct.pack("<3H", 0x3f80, 0xc000, 0x3f00)),
    }
    raw = serialize(entries, {"format": "pt", "note": "hand written"})
    # reorder the header keys (not the data) to b, h, a: the spec allows any
    hlen = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + hlen])
    hdr = {k: hdr[k] for k in ["__metadata__", "b", "h", "a"]}
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + raw[8 + hlen:]


def cnn_fixture():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    torch.manual_seed(15)
    # examples/fashion_mnist.c's CNN, 8x8 inputs and fewer channels
    m = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(24, 8), nn.ReLU(),
        nn.Linear(8, 3))
    with torch.no_grad():
        m[4].weight.uniform_(0.5, 1.5)
        m[4].bias.uniform_(-0.5, 0.5)
    m.train()
    with torch.no_grad():  # running stats that are not the defaults
        for _ in range(3):
            m(torch.randn(5, 1, 8, 8) * 2 + 0.5)
    name = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}

    def entries(ts):
        return {k: (name[t.dtype], t.shape, t.contiguous().numpy().tobytes())
                for k, t in ts.items()}

    state = entries({k: v.detach() for k, v in m.state_dict().items()})
    x = torch.randn(4, 1, 8, 8)
    y = torch.tensor([0, 2, 1, 2])
    m.eval()
    with torch.no_grad():
        out_eval = m(x)
    m.train()
    out_train = m(x)
    F.cross_entropy(out_train, y).backward()
    io = {"x": x, "y": y, "out_eval": out_eval,
          "out_train": out_train.detach(),
          "4.running_mean": m[4].running_mean,
          "4.running_var": m[4].running_var,
          "4.num_batches_tracked": m[4].num_batches_tracked}
    for k, p in m.named_parameters():
        io["grad." + k] = p.grad
    io = {k: (v.double() if v.is_floating_point() else v)
          for k, v in io.items()}
    return (serialize(state, {"format": "pt"}), serialize(state),
            serialize(entries(io)))


def main():
    out = sys.argv[1]
    with open(out + "/torch.safetensors", "wb") as f:
        f.write(torch_fixture())
    with open(out + "/plain.safetensors", "wb") as f:
        f.write(plain_fixture())
    cnn, bare, io = cnn_fixture()
    for n, b in [("cnn", cnn), ("cnn_bare", bare), ("cnn_io", io)]:
        with open(out + "/" + n + ".safetensors", "wb") as f:
            f.write(b)


if __name__ == "__main__":
    main()
