// fuzz-diskcache: a segment file of the local disk cache (VolumeOptions.diskCacheDirectory),
// which a crash or a bad disk may leave damaged. The input is one segment file: a 64-byte
// header ("VDCACHE\0", version, segment count, segment index, generation, crc32c) and pack
// records back to back. It is put in place as the segment its header names (segment 0 when
// the header does not parse), next to an empty valid segment of the previous generation, and:
//   DiskCache.init loads the cache (Segment.readGeneration/decodeHeader, Segment.scan,
//   the ring's generations), then every record the input holds is looked up
//   (withRecord → PackReader.checked), new records are inserted and looked up.
// Header and record crcs are recomputed first (fixPackChecksums: same layout as a pack's).
// Contract: damaged segments are dropped or truncated; never a crash.
import Foundation
import FuzzSupport
import Glibc
@testable import VDiskStore

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    setUpFuzzTarget(seeds: seeds)
    return 0
}

let directory = scratchDirectory + "/diskcache"
let segments = DiskCache.segmentCount
let capacity: Int64 = 1 << 20  // the smallest: 64 KiB segments

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var b = bytesOf(data, size)
    fixPackChecksums(&b)
    let index = b.count >= 20 ? Int(getLE32(b, 16)) & (segments - 1) : 0
    let generation = b.count >= 32 ? getLE64(b, 24) : 0
    try? FileManager.default.removeItem(atPath: directory)
    try! FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    writeFile(directory + "/" + DiskCache.Segment.fileName(index), b)
    if generation > 1 {
        let g = generation - 1
        let other = Int(g & UInt64(segments - 1))
        if other != index { writeFile(directory + "/" + DiskCache.Segment.fileName(other), DiskCache.Segment.encodeHeader(index: other, generation: g)) }
    }
    guard let cache = try? DiskCache(directory: directory, capacityBytes: capacity) else { return 0 }
    if fuzzVerbose { print("disk cache: \(cache.statistics)") }
    // Every record of the input, looked up by its hash and length; what comes back must be
    // one of the input's records of that hash, kind and length (several may share a hash).
    let records = packRecords(b).prefix(64)
    var held: [String: [[UInt8]]] = [:]
    func key(_ kind: RecordKind, _ ref: ChunkRef) -> String { "\(kind.rawValue) \(ref.hash.hex) \(ref.location.storedLength)" }
    for (kind, ref) in records {
        let o = Int(ref.location.offset)
        held[key(kind, ref), default: []].append(Array(b[o..<(o + ref.location.recordLength)]))
    }
    for (kind, ref) in records {
        if let got = cache.record(for: ref, kind: kind) {
            precondition(held[key(kind, ref)]!.contains(got), "the cache returned bytes the segment does not hold")
        }
    }
    // New records go in and come back.
    var pack = PackBuilder(pack: 3)
    var added: [(ChunkRef, Int)] = []
    for n in 0..<4 {
        let start = pack.bytes.count
        let ref = pack.append(patternBlock(UInt8(n), size: 1024 << n), kind: .data)
        added.append((ref, start))
    }
    for (ref, start) in added {
        let record = Array(pack.bytes[start..<(start + ref.location.recordLength)])
        guard record.withUnsafeBytes({ cache.insert(ref, kind: .data, record: $0) }) else { continue }
        if let got = cache.record(for: ref, kind: .data) { precondition(got == record, "an inserted record comes back changed") }
    }
    return 0
}

func seeds() -> [(String, [UInt8])] {
    var out: [(String, [UInt8])] = []
    for (name, index, generation) in [("segment-first", 1, UInt64(1)), ("segment-later", 5, UInt64(37))] {
        var pack = PackBuilder(pack: 1)
        pack.append(patternBlock(3, size: 4096), kind: .data)
        pack.append(patternBlock(4, size: 2000), kind: .data, compress: false)
        pack.append(TreeNode(level: 0, refs: [.zero]).encode(), kind: .tree)
        let records = Array(pack.bytes[PackFormat.headerSize...])
        out.append((name, DiskCache.Segment.encodeHeader(index: index, generation: generation) + records))
    }
    out.append(("segment-empty", DiskCache.Segment.encodeHeader(index: 2, generation: 2)))
    return out
}
