#!/usr/bin/env python3
"""Writes the hand-made regression inputs of fuzz/regressions/<target>/ (run from anywhere).

Each one is the smallest input showing one bug the fuzz targets found; see fuzz/README.md
for the list. Checksums are written correct, although the targets recompute them anyway.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(bytes(data))


# --- fuzz-disk: whole disk images ---------------------------------------------------------

def protective_mbr_and_gpt():
    b = bytearray(2048)
    b[510], b[511] = 0x55, 0xAA
    b[446 + 4] = 0xEE                                    # protective MBR entry
    struct.pack_into("<II", b, 446 + 8, 1, 3)
    b[512:520] = b"EFI PART"
    struct.pack_into("<Q", b, 512 + 0x48, 2)             # entries at LBA 2
    struct.pack_into("<II", b, 512 + 0x50, 1, 128)       # 1 entry of 128 bytes
    b[1024] = 0xAF                                       # nonzero type GUID
    return b

b = protective_mbr_and_gpt()
struct.pack_into("<Q", b, 512 + 0x48, 1 << 60)           # entry LBA × 512 overflows
write("fuzz-disk", "gpt-table-lba-overflow", b)

b = protective_mbr_and_gpt()
struct.pack_into("<QQ", b, 1024 + 32, 1 << 56, 1 << 56)  # first LBA × 512 overflows
write("fuzz-disk", "gpt-entry-first-lba-overflow", b)

b = protective_mbr_and_gpt()
struct.pack_into("<QQ", b, 1024 + 32, 1 << 54, (1 << 55) - 1)  # offset + length = 2^64
write("fuzz-disk", "gpt-entry-end-overflow", b)

b = bytearray(2048)
s = 1024                                                 # ext4 superblock
struct.pack_into("<I", b, s + 0x14, 1)                   # s_first_data_block
struct.pack_into("<I", b, s + 0x18, 0)                   # 1 KiB blocks
struct.pack_into("<I", b, s + 0x20, 8192)                # blocks per group
struct.pack_into("<H", b, s + 0x38, 0xEF53)
struct.pack_into("<H", b, s + 0x3A, 1)                   # clean
struct.pack_into("<I", b, s + 0x60, 0x80)                # INCOMPAT_64BIT
struct.pack_into("<I", b, s + 0x150, 1 << 22)            # blocks_count_hi: 2^54 blocks
write("fuzz-disk", "ext4-block-count-overflow", b)

# --- fuzz-records: selector byte + record --------------------------------------------------

ns = b"VDNS" + struct.pack("<IQI", 1, 1, 0xFFFFFFFF)    # namespace claiming 2^32-1 entries
write("fuzz-records", "namespace-huge-count", b"\x00" + ns)

# --- fuzz-index: index files ---------------------------------------------------------------

PAGE = 4096

def index_file(bits, count, dirty=0, bucket_counts=()):
    b = bytearray((2 ** bits + 1) * PAGE)
    b[0:8] = b"VDISKIX2"
    struct.pack_into("<IIQQI", b, 8, 1, bits, count, 3, dirty)
    struct.pack_into("<I", b, 36, crc32c(b[0:36]))
    for i in range(2 ** bits):
        p = (i + 1) * PAGE
        n = bucket_counts[i] if i < len(bucket_counts) else 0
        struct.pack_into("<H", b, p, n)
        for e in range(min(n, 127)):                      # entries: hash prefix, pack 1
            o = p + 8 + e * 32
            b[o] = (i << (8 - bits)) & 0xFF
            b[o + 1] = e
            struct.pack_into("<III", b, o + 20, 1, 64 + e, 10)
        struct.pack_into("<I", b, p + 4, crc32c(b[p + 8:p + PAGE], crc32c(b[p:p + 4])))
    return b

# A clean index whose header claims 2^40 entries: the first flush doubles the table ~32 times.
write("fuzz-index", "entry-count-growth", index_file(1, 1 << 40))
# A clean index with a bucket claiming 511 entries (room for 127): flush/grow/remove go past the page.
write("fuzz-index", "bucket-count-over-capacity", index_file(1, 20, bucket_counts=(511, 3)))
# A clean index whose header counts 0 entries while its buckets hold 5: remove underflows.
write("fuzz-index", "entry-count-below-buckets", index_file(1, 0, bucket_counts=(5, 0)))

# --- fuzz-journal: journal segments --------------------------------------------------------

def jrecord(kind, path, block, size_after, payload=b""):
    h = struct.pack("<IBBHQQI", 0x4E524A56, kind, 0, len(path), block, size_after, len(payload))
    c = crc32c(path + payload, crc32c(h))
    return h + struct.pack("<I", c) + path + payload

DATA, ZERO = 1, 2
# A zero record for block 2^62 of a.img: block × 4096 overflows in the replay's flush.
write("fuzz-journal", "zero-record-huge-block", jrecord(ZERO, b"a.img", 1 << 62, 3 * 4096))
# A record whose path is not UTF-8 (one byte 0xFF): replay's String(decoding:) makes it 3
# bytes, so Volume.init reads the next data record's block 2 bytes too far on.
block = bytes((i // 64 + 5) & 0xFF for i in range(4096))
write("fuzz-journal", "path-not-utf8-shifts-data",
      jrecord(ZERO, b"\xff", 0, 0) + jrecord(DATA, b"a.img", 0, 3 * 4096, block) + jrecord(ZERO, b"a.img", 2, 3 * 4096))

# --- fuzz-store: pack 1 of a store ----------------------------------------------------------

# The fuzz-store seed (a small consistent store, made by `fuzz-store` with VDISKFS_FUZZ_SEEDS)
# with its header naming pack 2^32: Store.open indexes its records under that number and the
# index's precondition (pack numbers fit in 32 bits) stops the process.
seed = os.path.join(HERE, "..", "corpus", "fuzz-store", "store")
if os.path.exists(seed):
    b = bytearray(open(seed, "rb").read())
    struct.pack_into("<Q", b, 16, 1 << 32)
    struct.pack_into("<I", b, 60, crc32c(b[0:60]))
    write("fuzz-store", "pack-number-above-2-32", b)
else:
    print("fuzz-store/pack-number-above-2-32 kept: no seed corpus (run make-corpus.sh first)")

# --- fuzz-diskcache: a disk cache segment file ----------------------------------------------

def cache_header(index, generation):
    b = bytearray(64)
    b[0:8] = b"VDCACHE\0"
    struct.pack_into("<IIIIQ", b, 8, 1, 16, index, 0, generation)
    struct.pack_into("<I", b, 60, crc32c(b[0:60]))
    return b

# Segment 2 of generation 2^64 - 2^40 + 2 (its low bits say segment 2, as required): the
# first record cached is published under Int(generation), which traps.
write("fuzz-diskcache", "generation-above-2-63", cache_header(2, (1 << 64) - (1 << 40) + 2))

# --- fuzz-records: namespaces whose image fields overflow on every read --------------------

def ns_with_image(size, block_size, depth):
    path = b"x.img"
    e = struct.pack("<H", len(path)) + path + bytes([2]) + struct.pack("<IIIqq", 0o100644, 0, 0, 1, 1)
    e += struct.pack("<QIB", size, block_size, depth) + bytes(48)
    return b"VDNS" + struct.pack("<IQI", 1, 1, 1) + e

# Size 2^64 - 1: ImageRoot.blockCount's size + block size - 1 overflows.
write("fuzz-records", "namespace-image-size-overflow", b"\x00" + ns_with_image((1 << 64) - 1, 4096, 1))
# Depth 8 (decode allows up to 8): TreeNode.span(ofLevel: 7) = 1024^7 overflows.
write("fuzz-records", "namespace-image-depth-8", b"\x00" + ns_with_image(1 << 40, 4096, 8))

# --- fuzz-store: a tree entry naming a member its grouped record does not have ----------------

# The fuzz-store seed with raw metadata (its tree nodes stored uncompressed): in the leaf
# holding the grouped record's members, the first member's entry is made to name member 15 of
# a group of 3. Reading that block, PackReader.checked takes member 15's hash from the
# record's hash table (PackFormat.memberHash) before checking that the group has it: 416
# bytes past a record of about 180 (stack-buffer-overflow).
seed = os.path.join(HERE, "..", "corpus", "fuzz-store", "store-raw-metadata")
if os.path.exists(seed):
    b = bytearray(open(seed, "rb").read())
    off, done = 64, False
    while off + 56 <= len(b) and not done:
        kind, codec = b[off + 4], b[off + 5]
        stored = struct.unpack_from("<I", b, off + 12)[0]
        if kind == 2 and codec == 0:                       # a tree node, stored raw
            n = struct.unpack_from("<I", b, off + 56 + 4)[0]
            for i in range(n):
                e = off + 56 + 8 + i * 48 + 44             # the entry's length field
                field = struct.unpack_from("<I", b, e)[0]
                if field >> 28:                            # a member of a grouped record
                    struct.pack_into("<I", b, e, field | 0xF << 24)
                    done = True
                    break
        off += 56 + stored
    if done:
        write("fuzz-store", "group-member-out-of-range", b)   # record crcs: the target fixes them
    else:
        print("fuzz-store/group-member-out-of-range not written: no grouped entry in the seed")
else:
    print("fuzz-store/group-member-out-of-range kept: no seed corpus (run make-corpus.sh first)")
