// fuzz-pack: pack files and pack summaries as the store reads them from its backend.
//
// Input starting "VDISKPS1": a pack summary (PackSummary.decode, the record list a shared
// store keeps beside each sealed pack). Otherwise: a pack file: PackFormat.decodeHeader,
// then PackScanner.scan (PackFormat.loadRecordHeader, recordChecksumMatches) over a
// directory backend, then every record that checks out is read back through PackReader
// (PackReader.checked, LZ4/raw decoding) and decoded by its kind's decoder; a grouped data
// record (store format 2) member by member, against the whole group's decoding, and by refs
// naming members it does not have (see `group`).
//
// Checksums (pack header, records, summary) are recomputed before parsing (see
// fixPackChecksums): the parsing behind them is what is fuzzed; the unfixed bytes are run
// through decodeHeader/PackSummary.decode too, which must then reject or accept them alike.
// Contract: damaged bytes throw or end the scan; never a crash or an unbounded allocation.
import FuzzSupport
@testable import VDiskStore

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    setUpFuzzTarget(seeds: seeds)
    return 0
}

let summaryMagic = Array("VDISKPS1".utf8)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = bytesOf(data, size)
    if input.starts(with: summaryMagic) { summary(input) } else { pack(input) }
    return 0
}

func summary(_ input: [UInt8]) {
    _ = try? PackSummary.decode(input, pack: 5)
    var b = input
    fixSummaryChecksum(&b)
    // The pack it must describe: the one it names (else only an empty summary decodes).
    let stated = b.count >= 16 ? getLE64(b, 8) : 0
    for pack in [stated, stated &+ 1] {
        guard let s = try? PackSummary.decode(b, pack: pack) else { continue }
        if fuzzVerbose { print("summary of pack \(pack): \(s.entries.count) entries") }
        var again = PackSummary()
        for e in s.entries { again.add(hash: e.hash, kind: e.kind, location: e.location) }
        precondition(s.entries.isEmpty || again.encode() == b, "summary does not re-encode to its bytes")
    }
}

func pack(_ input: [UInt8]) {
    _ = try? PackFormat.decodeHeader(input, file: "fuzz.pack")
    var b = input
    fixPackChecksums(&b)
    guard let number = try? PackFormat.decodeHeader(b, file: "fuzz.pack") else { return }
    // Filed under the number its header names, as a store would have it.
    let backend = StoreFixture.packDirectory(pack: b, number: number)
    let reader = PackReader(backend: backend)
    var records = 0
    let end = try? PackScanner.scan(backend, pack: number, withPayloads: true) { rec in
        records += 1
        precondition(Int(rec.ref.location.offset) + rec.ref.location.recordLength <= b.count, "record past the pack's end")
        guard rec.checksumOK else { return }
        if rec.members.count > 1 { group(rec, reader); return }
        // Read it back as the store would, by its ref.
        guard let raw = try? reader.readBytes(rec.ref, kind: rec.kind) else { return }
        precondition(raw.count == rec.rawLength)
        switch rec.kind {
        case .data:
            var out = [UInt8](repeating: 0, count: rec.rawLength)
            let n = try? out.withUnsafeMutableBytes { try reader.read(rec.ref, kind: .data, into: $0) }
            precondition(n == nil || out == raw, "two reads of one record differ")
        case .tree: _ = try? TreeNode.decode(raw, what: "tree node")
        case .namespace:
            _ = try? Namespace.decode(raw)
        case .snapshotTable: _ = try? Snapshot.decodeTable(raw)
        }
    }
    if fuzzVerbose { print("pack \(number): \(records) records, valid through \(String(describing: end))") }
}

/// A grouped data record (store format 2): each member read by its own ref, as a tree entry
/// names it (PackReader.checked, then the group decoded up to that member), must equal its
/// slice of the whole group's decoding (PackReader.decodeGroup, as a run of whole groups is
/// read). A ref naming a member the group does not have (a damaged tree or index entry)
/// must be refused.
func group(_ rec: PackScanner.Record, _ reader: PackReader) {
    guard let header = PackFormat.loadRecordHeader(rec.bytes.baseAddress!) else { preconditionFailure("a scanned record's header does not load") }
    precondition(rec.members.count == header.memberCount && header.memberLength * header.memberCount == rec.rawLength)
    var whole = [UInt8](repeating: 0, count: rec.rawLength)
    let decoded = (try? whole.withUnsafeMutableBytes { try PackReader.decodeGroup(rec.bytes, header, rec.ref, into: $0) }) != nil
    let len = header.memberLength
    for (m, ref) in rec.members.enumerated() {
        precondition(ref.location.member == m && ref.location.memberCount == header.memberCount
                     && ref.location.record == rec.ref.location, "the scan gives member \(m) a wrong location")
        var out = [UInt8](repeating: 0, count: len)
        guard let n = try? out.withUnsafeMutableBytes({ try reader.read(ref, kind: .data, into: $0) }) else { continue }
        precondition(n == len)
        if decoded { precondition(out[...] == whole[(m * len)..<((m + 1) * len)], "member \(m) read alone differs from the group's decoding") }
    }
    // A location naming a member the group does not have must not read (fixed in 7217699).
    let count = UInt32(header.memberCount)
    for m in Set([count, 15]) where m < 16 && m >= count {
        let l = rec.ref.location
        let bad = ChunkLocation(pack: l.pack, offset: l.offset, lengthField: (count - 1) << 28 | m << 24 | l.storedLength)
        var out = [UInt8](repeating: 0, count: len)
        let n = try? out.withUnsafeMutableBytes { try reader.read(ChunkRef(hash: rec.members[0].hash, location: bad), kind: .data, into: $0) }
        precondition(n == nil, "member \(m) of a group of \(count) reads")
    }
}

func seeds() -> [(String, [UInt8])] {
    let empty = PackBuilder(pack: 9)
    var grouped = PackBuilder(pack: 4)
    grouped.appendGroup([patternBlock(1), patternBlock(2)])
    grouped.appendGroup((0..<16).map { patternBlock(UInt8($0), size: 1024) })
    grouped.appendGroup([patternBlock(3, size: 512), [UInt8](repeating: 0xCD, count: 512), patternBlock(4, size: 512)], compress: false)
    grouped.appendGroup([[UInt8](repeating: 1, count: 16), [UInt8](repeating: 2, count: 16)])  // a record of < 536 bytes
    grouped.append(patternBlock(9, size: 300), kind: .data)
    var small = PackBuilder(pack: 2)
    let a = small.append(patternBlock(7, size: 8192), kind: .data)
    let b = small.append([UInt8](repeating: 0xAB, count: 100), kind: .data, compress: false)
    small.append(TreeNode(level: 0, refs: [a, .zero, b]).encode(), kind: .tree)
    var summary = PackSummary()
    summary.add(hash: a.hash, kind: .data, location: a.location)
    summary.add(hash: b.hash, kind: .data, location: b.location)
    // A torn tail: half a record after the last whole one.
    let torn = small.bytes + Array(small.bytes[64..<100])
    return [
        ("pack-store", storeSeedPack()),
        ("pack-store-raw-metadata", storeSeedPack(compressMetadata: false)),
        ("pack-small", small.bytes),
        ("pack-grouped", grouped.bytes),
        ("pack-torn", torn),
        ("pack-empty", empty.bytes),
        ("summary", summary.encode()),
        ("summary-empty", PackSummary().encode()),
    ]
}
