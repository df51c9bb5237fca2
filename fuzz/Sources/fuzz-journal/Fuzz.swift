// fuzz-journal: a write-back journal segment (journal-<seq>.log) as a crashed mount leaves
// it. The input is the segment file. Each run:
//   1. WriteJournal.replay parses it (records: magic "VJRN", kind, path length, block, image
//      size after, payload length, crc32c, path, payload; replay stops at the first record
//      that does not check out);
//   2. a Volume is opened over a small store (the fuzz-store seed: images "a.img",
//      "vm/b.img", "vm/empty.img") with the segment in its journal directory: Volume.init
//      replays it into the images and commits (flushFrozen), as the next mount would; then
//      a few blocks of every image are read back and the volume is closed.
// Record crcs are recomputed before parsing (fixJournalChecksums) so that the fields behind
// them are fuzzed. Contract: records that do not make sense are skipped or rejected; never a
// crash, a hang or an unbounded allocation.
import Foundation
import FuzzSupport
import Glibc
@testable import VDiskStore

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    setUpFuzzTarget(seeds: seeds)
    return 0
}

let storePack = storeSeedPack()
let storeDirectory = scratchDirectory + "/store"
/// The fixture store's index as Store.open built it, made once: each run starts from a fresh
/// store with that index instead of rebuilding it.
let storeIndex: [UInt8] = {
    StoreFixture.make(at: storeDirectory, pack: storePack)
    let store = try! Store.open(at: storeDirectory, access: .readWrite, purpose: "fuzz")
    store.close()
    return try! FileIO.readAll(storeDirectory + "/index/chunks")
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var b = bytesOf(data, size)
    fixJournalChecksums(&b)
    let journal = scratchDirectory + "/journal"
    try? FileManager.default.removeItem(atPath: journal)
    try! FileManager.default.createDirectory(atPath: journal, withIntermediateDirectories: true)
    let segment = journal + "/" + WriteJournal.fileName(1)
    writeFile(segment, b)

    // 1. The parser alone.
    var records: [WriteJournal.Record] = []
    try? WriteJournal.replay(path: segment) { records.append($0) }
    if fuzzVerbose { print("journal: \(records.count) records: \(records.map { "\($0.kind) \($0.path) #\($0.block)" })") }

    // 2. Replay into a volume.
    StoreFixture.make(at: storeDirectory, pack: storePack, index: storeIndex)
    guard let store = try? Store.open(at: storeDirectory, access: .readWrite, purpose: "fuzz") else {
        preconditionFailure("the fixture store does not open")
    }
    defer { store.close() }
    var options = VolumeOptions()
    options.journalDirectory = journal
    options.cacheBytes = 4 << 20
    options.flushInterval = 3600
    guard let volume = try? Volume(store: store, options: options) else { return 0 }
    defer { try? volume.close() }
    // The records Volume.init takes: those of the fixture's images up to the first naming a
    // block whose byte offset overflows (damage: the segment's replay stops there), but for
    // data records that do not hold one block and ref records that do not hold one ref.
    var taken: [WriteJournal.Record] = []
    for r in records {
        guard let img = fixtureImages[r.path] else { continue }
        if r.block.multipliedReportingOverflow(by: UInt64(img.blockSize)).overflow { break }
        if r.kind == .data && r.payload.count != img.blockSize || r.kind == .ref && r.payload.count != ChunkRef.encodedSize { continue }
        taken.append(r)
    }
    // What the journal says each block holds now: the last data or zero record for it
    // (refs are not followed), for blocks inside the image's final size.
    var expected: [String: [UInt64: [UInt8]?]] = [:]
    var finalSize = fixtureImages.mapValues(\.size)
    for r in taken { finalSize[r.path] = max(finalSize[r.path]!, r.sizeAfter) }
    for r in taken {
        let img = fixtureImages[r.path]!
        switch r.kind {
        case .data: expected[r.path, default: [:]][r.block] = r.payload
        case .ref: expected[r.path, default: [:]][r.block] = .some(nil)  // not checked
        case .zero: expected[r.path, default: [:]][r.block] = [UInt8](repeating: 0, count: img.blockSize)
        case .size: break
        }
    }
    var buffer = [UInt8](repeating: 0, count: 65536)
    for (path, img) in fixtureImages {
        guard let id = resolve(volume, path), let a = try? volume.attributes(id) else { continue }
        // The first blocks, and the last ones (where a replayed size or block lands).
        for offset in [0, a.size > 65536 ? a.size - 65536 : 0] {
            _ = try? buffer.withUnsafeMutableBytes { try volume.read(id, offset: offset, into: $0) }
        }
        // The replayed blocks hold what the journal wrote.
        for (block, content) in expected[path] ?? [:] {
            guard let content, block < finalSize[path]! / UInt64(img.blockSize) else { continue }
            var got = [UInt8](repeating: 0, count: img.blockSize)
            // A block the journal wrote must read back (an error here is a lost write).
            let n: Int
            do { n = try got.withUnsafeMutableBytes { try volume.read(id, offset: block * UInt64(img.blockSize), into: $0) } }
            catch { preconditionFailure("\(path) block \(block), written by the journal, cannot be read: \(error)") }
            precondition(n == img.blockSize && got == content, "\(path) block \(block) does not hold what the journal wrote")
        }
    }
    return 0
}

/// The fixture's images (see storeSeedPack) with their block size and size.
let fixtureImages: [String: (blockSize: Int, size: UInt64)] = [
    "a.img": (4096, 3 * 4096), "vm/b.img": (4096, 3000 * 4096), "vm/empty.img": (65536, 1 << 20),
]

func resolve(_ volume: Volume, _ path: String) -> NodeID? {
    var id = Volume.rootNode
    for part in path.split(separator: "/") {
        guard let a = try? volume.lookup(parent: id, name: String(part)) else { return nil }
        id = a.node
    }
    return id
}

func seeds() -> [(String, [UInt8])] {
    func record(_ kind: WriteJournal.Kind, _ path: String, block: UInt64, sizeAfter: UInt64, payload: [UInt8] = []) -> [UInt8] {
        let p = Array(path.utf8)
        var r = [UInt8](repeating: 0, count: WriteJournal.recordSize(pathBytes: p.count, payload: payload.count))
        r.withUnsafeMutableBytes { o in
            payload.withUnsafeBytes { _ = WriteJournal.encode(to: o.baseAddress!, kind: kind, path: p, block: block, sizeAfter: sizeAfter, payload: $0) }
        }
        return r
    }
    var ref = [UInt8](repeating: 0, count: ChunkRef.encodedSize)
    // The first data record of the fixture's pack (a.img's block 0).
    let a = firstRecord(storePack, kind: .data)!
    ref.withUnsafeMutableBytes { a.store(to: $0.baseAddress!) }
    let writes = record(.data, "a.img", block: 1, sizeAfter: 3 * 4096, payload: patternBlock(9))
        + record(.zero, "a.img", block: 0, sizeAfter: 3 * 4096)
        + record(.data, "vm/b.img", block: 2999, sizeAfter: 3000 * 4096, payload: patternBlock(10))
    let grow = record(.size, "vm/empty.img", block: 0, sizeAfter: 4 << 20)
        + record(.data, "vm/empty.img", block: 40, sizeAfter: 4 << 20, payload: patternBlock(11, size: 65536))
        + record(.ref, "a.img", block: 2, sizeAfter: 5 * 4096, payload: ref)
    let stale = record(.data, "gone.img", block: 0, sizeAfter: 4096, payload: patternBlock(12))
        + record(.zero, "vm", block: 0, sizeAfter: 0)
    let torn = writes + Array(writes.prefix(40))
    return [("writes", writes), ("grow-and-ref", grow), ("removed-images", stale), ("torn-tail", torn), ("empty", [])]
}
