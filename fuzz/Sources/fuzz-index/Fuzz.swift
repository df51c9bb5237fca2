// fuzz-index: the chunk index file (STORE/index/chunks), derived data a crash or a bad disk
// may leave damaged. The input is the whole file: a 4 KiB header page ("VDISKIX2", version,
// bits, entry count, indexed-through pack, dirty flag, crc32c) and 2^bits bucket pages
// (count u16, 2 bytes, crc32c, 127 entries of 32 bytes).
//
// Each run writes the input to a scratch file and does what a store does with its index:
// ChunkIndex.open (which, for a dirty index, checks every bucket and asks for a rebuild when
// one is torn: the run stops there, as Store.open resets it then), lookups of the hashes the
// buckets hold and of others, inserts and a flush (which may double the table), a removal
// by location, lookups again, and the removal of everything a rebuild starts with.
//
// The header crc is recomputed before parsing; bucket crcs too unless the dirty flag's
// bit 1 is set (so that both "dirty, every bucket intact" and "dirty, torn" are reached).
// Contract: a damaged index is rejected (error) or rebuilt (torn); never a crash.
import FuzzSupport
import Glibc
@testable import VDiskStore

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    setUpFuzzTarget(seeds: seeds)
    return 0
}

let page = ChunkIndex.pageSize

/// Recomputes the header crc and (unless asked not to) every whole bucket's crc.
func fixChecksums(_ b: inout [UInt8]) {
    guard b.count >= 40 else { return }
    putLE32(&b, 36, crc(b, 0..<36))
    guard getLE32(b, 32) & 2 == 0 else { return }
    var p = page
    while p + page <= b.count {
        putLE32(&b, p + 4, crc(b, (p + 8)..<(p + page), seed: crc(b, p..<(p + 4))))
        p += page
    }
}

/// Hashes of the entries the buckets hold (their first 20 bytes; the rest zero), at most `limit`.
func heldHashes(_ b: [UInt8], limit: Int) -> [ChunkHash] {
    var out: [ChunkHash] = []
    var p = page
    while p + page <= b.count && out.count < limit {
        let n = min(Int(b[p]) | Int(b[p + 1]) << 8, ChunkIndex.bucketCapacity)
        for i in 0..<min(n, 4) {
            var h = [UInt8](repeating: 0, count: 32)
            h.replaceSubrange(0..<20, with: b[(p + 8 + i * 32)..<(p + 8 + i * 32 + 20)])
            out.append(h.withUnsafeBytes { ChunkHash(bytes: $0.baseAddress!) })
        }
        p += page
    }
    return out
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var b = bytesOf(data, size)
    fixChecksums(&b)
    let path = scratchDirectory + "/chunks"
    writeFile(path, b)
    defer { unlink(path); unlink(path + ".new") }
    guard let (index, torn) = try? ChunkIndex.open(path: path) else { return 0 }
    if fuzzVerbose { print("index: \(index.entryCount) entries through pack \(index.indexedThrough), torn: \(torn)") }
    if torn { return 0 }  // Store.open resets and rebuilds it
    // flush doubles the table while the header's entry count (plus pending) passes 70 % of
    // its capacity. The entries really there fit in the file, so honest growth is one
    // doubling (two with the pending ones); a count that asks for more makes a small damaged
    // file grow into gigabytes on the first flush (2^bits pages each doubling: it would fill
    // the scratch tmpfs, so the contract is checked here rather than by running it).
    let bits = Int(getLE32(b, 12)), count = getLE64(b, 16)
    var needed = bits
    while Double(count) + 17 > 0.7 * Double(ChunkIndex.bucketCapacity) * scalbn(1.0, needed) { needed += 1 }
    if needed > bits + 2 {
        if skipKnownBugs { return -1 }
        preconditionFailure("index header: entry count \(count) makes flush grow the table from 2^\(bits) to 2^\(needed) buckets")
    }
    let held = heldHashes(b, limit: 64)
    for h in held { _ = index.lookup(h) }
    for n in 0..<8 { _ = index.lookup(seedHash(UInt64(n) << 40)) }
    // New chunks in pack 7, spread over the buckets by their top bits.
    for n in 0..<16 {
        var h = seedHash(UInt64(n))
        h.w0 = UInt64(n) << 60 | h.w0 >> 4
        index.insert(h, ChunkLocation(pack: 7, offset: UInt32(64 + n * 100), storedLength: 44))
    }
    // Make one held entry newer (replacing it in place).
    if let h = held.first { index.insert(h, ChunkLocation(pack: 8, offset: 64, storedLength: 10)) }
    do {
        try index.flush(indexedThrough: 8)
        for n in 0..<16 {
            var h = seedHash(UInt64(n))
            h.w0 = UInt64(n) << 60 | h.w0 >> 4
            precondition(index.lookup(h)?.pack == 7, "a flushed entry is not found")
        }
        try index.remove { $0.pack == 7 }
        for h in held { _ = index.lookup(h) }
        // As a rebuild starts (Store.rebuildIndex): everything goes.
        try index.remove { _ in true }
        for h in held { precondition(index.lookup(h) == nil, "an entry survives remove(where: all)") }
    } catch {
        // I/O errors only (the scratch directory is on tmpfs); nothing to check.
    }
    return 0
}

// (Known bugs: none left. Bucket counts past capacity read as full, a header's entry count
// the table cannot hold means a rebuild, and remove never underflows the count: 7217699.)

/// Index files with 2 and 4 buckets (bits 1 and 2), made by the real writer: an empty table
/// grown by flushes, then shrunk to the wanted size by rewriting the header.
func seeds() -> [(String, [UInt8])] {
    var out: [(String, [UInt8])] = []
    for (name, bits, entries, dirty) in [("index-2-buckets", 1, 20, UInt32(0)), ("index-4-buckets-dirty", 2, 200, 1),
                                           ("index-2-full", 1, 200, 0)] {
        var b = [UInt8](repeating: 0, count: ((1 << bits) + 1) * page)
        b.replaceSubrange(0..<8, with: ChunkIndex.magic)
        putLE32(&b, 8, 1)
        putLE32(&b, 12, UInt32(bits))
        putLE64(&b, 16, UInt64(entries))
        putLE64(&b, 24, 3)
        putLE32(&b, 32, dirty)
        // Entries spread over the buckets by their top bits, as ChunkIndex places them.
        var counts = [Int](repeating: 0, count: 1 << bits)
        for n in 0..<entries {
            var h = seedHash(UInt64(n))
            h.w0 = UInt64(n % (1 << bits)) << UInt64(64 - bits) | (h.w0 >> UInt64(bits))
            let bucket = Int(h.w0 >> UInt64(64 - bits))
            guard counts[bucket] < ChunkIndex.bucketCapacity else { continue }
            let e = (bucket + 1) * page + ChunkIndex.bucketHeader + counts[bucket] * ChunkIndex.entrySize
            b.withUnsafeMutableBytes { ChunkIndex.storeEntry($0.baseAddress! + e, h, ChunkLocation(pack: UInt64(1 + n % 3), offset: UInt32(64 + n), storedLength: 100)) }
            counts[bucket] += 1
        }
        for (bucket, n) in counts.enumerated() {
            b[(bucket + 1) * page] = UInt8(n & 0xFF)
            b[(bucket + 1) * page + 1] = UInt8(n >> 8)
        }
        fixChecksums(&b)
        out.append((name, b))
    }
    return out
}
