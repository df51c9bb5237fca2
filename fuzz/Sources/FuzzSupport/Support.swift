// Shared by the fuzz targets: seed emission, checksum fix-ups, scratch directory stores.
// Nothing here is product code; it only drives the parsers of VDiskStore.
import Foundation
import Glibc
@testable import VDiskStore

// MARK: seeds

/// Called from each target's `LLVMFuzzerInitialize`. Silences the store's diagnostics
/// (unless VDISKFS_FUZZ_VERBOSE is set). With `VDISKFS_FUZZ_SEEDS=DIR` in the environment,
/// writes the target's generated seed inputs into DIR and exits (make-corpus.sh uses this);
/// otherwise returns and fuzzing starts.
public func setUpFuzzTarget(seeds make: () throws -> [(String, [UInt8])]) {
    if !fuzzVerbose { logHandler = nil }
    guard let dir = ProcessInfo.processInfo.environment["VDISKFS_FUZZ_SEEDS"], !dir.isEmpty else { return }
    do {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let seeds = try make()
        for (name, bytes) in seeds {
            try Data(bytes).write(to: URL(fileURLWithPath: dir + "/" + name))
        }
        print("wrote \(seeds.count) seeds to \(dir)")
        exit(0)
    } catch {
        print("seed generation failed: \(error)")
        exit(1)
    }
}

/// True when VDISKFS_FUZZ_VERBOSE is set: targets print what they parsed (to check seeds).
public let fuzzVerbose = ProcessInfo.processInfo.environment["VDISKFS_FUZZ_VERBOSE"] != nil

/// True when VDISKFS_FUZZ_SKIP_KNOWN is set: targets skip inputs that hit a crash already
/// reported (see each target's `knownBug`), so that a run goes past them.
public let skipKnownBugs = ProcessInfo.processInfo.environment["VDISKFS_FUZZ_SKIP_KNOWN"] != nil

public func bytesOf(_ data: UnsafePointer<UInt8>, _ size: Int) -> [UInt8] {
    size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
}

// MARK: little-endian helpers

public func getLE32(_ b: [UInt8], _ o: Int) -> UInt32 {
    UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24
}

public func getLE64(_ b: [UInt8], _ o: Int) -> UInt64 {
    UInt64(getLE32(b, o)) | UInt64(getLE32(b, o + 4)) << 32
}

public func putLE32(_ b: inout [UInt8], _ o: Int, _ v: UInt32) {
    for i in 0..<4 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
}

public func putLE64(_ b: inout [UInt8], _ o: Int, _ v: UInt64) {
    for i in 0..<8 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
}

public func crc(_ b: [UInt8], _ range: Range<Int>, seed: UInt32 = 0) -> UInt32 {
    b.withUnsafeBytes { crc32c(UnsafeRawBufferPointer(rebasing: $0[range]), seed: seed) }
}

/// A deterministic hash for seeds (not SHA-256 of anything: the parsers do not care).
public func seedHash(_ n: UInt64) -> ChunkHash {
    ChunkHash(w0: 0x1234_5678_9ABC_DEF0 &* (n + 1), w1: n, w2: ~n, w3: n &* 31)
}

// MARK: checksum fix-ups
//
// Every on-disk format of the store carries crc32c checksums; a mutated input almost never
// passes them and the fuzzer would only ever exercise "checksum mismatch". The fix-ups
// recompute them the way the writer does, walking the bytes exactly as the parser will, so
// the parsing behind the check is reached. Each target documents when it applies them.

/// Pack file: header crc (bytes 60..<64) and every record's crc, records walked as
/// `PackScanner.scan` walks them (stops where it stops).
public func fixPackChecksums(_ b: inout [UInt8]) {
    guard b.count >= PackFormat.headerSize else { return }
    putLE32(&b, 60, crc(b, 0..<60))
    var off = PackFormat.headerSize
    while off + PackFormat.recordHeaderSize <= b.count {
        let h = b.withUnsafeBytes { PackFormat.loadRecordHeader($0.baseAddress! + off) }
        guard let h else { break }
        let len = PackFormat.recordHeaderSize + h.storedLength
        guard off + len <= b.count else { break }
        var c = crc(b, off..<(off + 48))
        c = crc(b, (off + PackFormat.recordHeaderSize)..<(off + len), seed: c)
        putLE32(&b, off + 48, c)
        off += len
    }
}

/// Pack summary: the trailing crc over everything before it.
public func fixSummaryChecksum(_ b: inout [UInt8]) {
    guard b.count >= 4 else { return }
    putLE32(&b, b.count - 4, crc(b, 0..<(b.count - 4)))
}

/// Journal segment: each record's crc (header bytes 0..<28, path and payload), walked as
/// `WriteJournal.replay` walks them.
public func fixJournalChecksums(_ b: inout [UInt8]) {
    var off = 0
    let hs = WriteJournal.headerSize
    while off + hs <= b.count {
        guard getLE32(b, off) == WriteJournal.magic, WriteJournal.Kind(rawValue: b[off + 4]) != nil else { break }
        let pathLen = Int(b[off + 6]) | Int(b[off + 7]) << 8
        let payLen = Int(getLE32(b, off + 24))
        guard payLen <= 1 << 20, off + hs + pathLen + payLen <= b.count else { break }
        var c = crc(b, off..<(off + 28))
        c = crc(b, (off + hs)..<(off + hs + pathLen + payLen), seed: c)
        putLE32(&b, off + 28, c)
        off += hs + pathLen + payLen
    }
}

// MARK: scratch directory

let scratchBase = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()

/// A private directory on tmpfs (else the temporary directory) for targets whose parser
/// reads files: `vdiskfs-fuzz-<pid>`, removed at exit. A run that crashed cannot remove its
/// own: those of processes that are gone are removed here.
public let scratchDirectory: String = {
    for name in (try? FileManager.default.contentsOfDirectory(atPath: scratchBase)) ?? [] where name.hasPrefix("vdiskfs-fuzz-") {
        if let pid = Int32(name.dropFirst("vdiskfs-fuzz-".count)), kill(pid, 0) != 0 && errno == ESRCH {
            try? FileManager.default.removeItem(atPath: scratchBase + "/" + name)
        }
    }
    let dir = "\(scratchBase)/vdiskfs-fuzz-\(getpid())"
    try? FileManager.default.removeItem(atPath: dir)
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    atexit { try? FileManager.default.removeItem(atPath: "\(scratchBase)/vdiskfs-fuzz-\(getpid())") }
    return dir
}()

public func writeFile(_ path: String, _ bytes: [UInt8]) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    precondition(fd >= 0, "cannot create \(path)")
    var done = 0
    bytes.withUnsafeBytes { b in
        while done < b.count {
            let n = write(fd, b.baseAddress! + done, b.count - done)
            precondition(n > 0)
            done += n
        }
    }
    close(fd)
}

// MARK: building packs and stores

/// Builds a pack file the way PackWriter lays it out: header, then records.
public struct PackBuilder {
    public private(set) var bytes: [UInt8]
    public let pack: UInt64

    public init(pack: UInt64) {
        self.pack = pack
        bytes = PackFormat.encodeHeader(pack: pack, storeID: Array(0..<16), created: 1_700_000_000_000_000_000)
    }

    /// Appends `raw` (not empty) as a record, LZ4-compressed when that is smaller unless `raw` is asked for.
    @discardableResult
    public mutating func append(_ raw: [UInt8], kind: RecordKind, compress: Bool = true) -> ChunkRef {
        precondition(!raw.isEmpty)
        let hash = ChunkHash.of(raw)
        var payload = [UInt8](repeating: 0, count: Compression.bound(raw.count))
        var codec = Codec.raw
        var n = raw.count
        if compress {
            (codec, n) = raw.withUnsafeBytes { r in payload.withUnsafeMutableBytes { Compression.compress(r, into: $0) } }
        } else {
            payload = raw
        }
        let offset = bytes.count
        var header = [UInt8](repeating: 0, count: PackFormat.recordHeaderSize)
        header.withUnsafeMutableBytes { h in
            payload.withUnsafeBytes { p in
                PackFormat.storeRecordHeader(to: h.baseAddress!, kind: kind, codec: codec, rawLength: raw.count, hash: hash,
                                             payload: UnsafeRawBufferPointer(rebasing: p[0..<n]))
            }
        }
        bytes += header + payload[0..<n]
        return ChunkRef(hash: hash, location: ChunkLocation(pack: pack, offset: UInt32(offset), storedLength: UInt32(n)))
    }

    /// Appends `members` (2...16 chunks of one length) as one grouped data record, as import
    /// writes them (GroupEncoding: the hash table of members 1..., then the members
    /// compressed together, or raw); returns each member's ref.
    @discardableResult
    public mutating func appendGroup(_ members: [[UInt8]], compress: Bool = true) -> [ChunkRef] {
        precondition(members.count >= 2 && members.count <= PackFormat.maxGroupMembers
                     && members.allSatisfy { $0.count == members[0].count && !$0.isEmpty })
        let hashes = members.map { ChunkHash.of($0) }
        let raw = members.flatMap { $0 }
        let table = (members.count - 1) * 32
        var payload = [UInt8](repeating: 0, count: GroupEncoding.bound(members: members.count, rawLength: raw.count))
        var codec = Codec.raw
        var n = table + raw.count
        payload.withUnsafeMutableBytes { o in
            if compress {
                (codec, n) = raw.withUnsafeBytes { GroupEncoding.encode(hashes: hashes, raw: $0, into: o) }
            } else {
                for (m, h) in hashes.dropFirst().enumerated() { h.store(to: o.baseAddress! + m * 32) }
                raw.withUnsafeBytes { (o.baseAddress! + table).copyMemory(from: $0.baseAddress!, byteCount: raw.count) }
            }
        }
        let offset = bytes.count
        var header = [UInt8](repeating: 0, count: PackFormat.recordHeaderSize)
        header.withUnsafeMutableBytes { h in
            payload.withUnsafeBytes { p in
                PackFormat.storeRecordHeader(to: h.baseAddress!, kind: .data, codec: codec, rawLength: raw.count, hash: hashes[0],
                                             payload: UnsafeRawBufferPointer(rebasing: p[0..<n]), members: members.count)
            }
        }
        bytes += header + payload[0..<n]
        let first = ChunkLocation(pack: pack, offset: UInt32(offset), groupStoredLength: UInt32(n), member: 0, of: members.count)
        return hashes.enumerated().map { m, h in ChunkRef(hash: h, location: first.withMember(m)) }
    }
}

/// A block of `size` bytes that is not all zeros, different for each `seed`.
public func patternBlock(_ seed: UInt8, size: Int = 4096) -> [UInt8] {
    (0..<size).map { i in UInt8(truncatingIfNeeded: i / 64) &+ seed }
}

/// The pack of a small consistent store: two data blocks and a grouped record of three, a
/// leaf and an inner tree node, a namespace with three images (depth 1, depth 2, empty) and
/// a directory, and a snapshot table keeping that namespace. Its records name pack 1.
/// `StoreFixture` builds the root. With `compressMetadata` false, tree nodes, the namespace
/// and the snapshot table are stored raw (as when LZ4 does not make them smaller), so that
/// mutations reach their fields.
public func storeSeedPack(compressMetadata: Bool = true) -> [UInt8] {
    let c = compressMetadata
    var p = PackBuilder(pack: 1)
    let a = p.append(patternBlock(1), kind: .data)
    let b = p.append(patternBlock(2), kind: .data, compress: false)
    let leaf = p.append(TreeNode(level: 0, refs: [a, .zero, b]).encode(), kind: .tree, compress: c)
    // Three blocks in one grouped record (store format 2); they compress to a small record.
    let group = p.appendGroup((5...7).map { [UInt8](repeating: $0, count: 4096) })
    let leaf2 = p.append(TreeNode(level: 0, refs: [b] + group).encode(), kind: .tree, compress: c)
    let inner = p.append(TreeNode(level: 1, refs: [leaf, .zero, leaf2]).encode(), kind: .tree, compress: c)
    var ns = Namespace(generation: 3)
    try! ns.addImage("a.img", root: ImageRoot(size: 3 * 4096, blockSize: 4096, depth: 1, root: leaf), now: 1)
    try! ns.addImage("vm/b.img", root: ImageRoot(size: 3000 * 4096, blockSize: 4096, depth: 2, root: inner), now: 2)
    try! ns.addImage("vm/empty.img", root: .empty(size: 1 << 20, blockSize: 65536), now: 3)
    let nsRef = p.append(ns.encode(), kind: .namespace, compress: c)
    p.append(Snapshot.encodeTable([Snapshot(name: "first", created: 4, namespace: nsRef)]), kind: .snapshotTable, compress: c)
    return p.bytes
}

/// The records of a pack, walked as PackScanner walks them but without its 72 MiB buffer:
/// (kind, ref) of each whole record.
public func packRecords(_ b: [UInt8]) -> [(RecordKind, ChunkRef)] {
    guard b.count >= PackFormat.headerSize else { return [] }
    let pack = getLE64(b, 16)
    var out: [(RecordKind, ChunkRef)] = []
    var off = PackFormat.headerSize
    while off + PackFormat.recordHeaderSize <= b.count {
        guard let h = b.withUnsafeBytes({ PackFormat.loadRecordHeader($0.baseAddress! + off) }) else { break }
        let len = PackFormat.recordHeaderSize + h.storedLength
        guard off + len <= b.count else { break }
        out.append((h.kind, ChunkRef(hash: h.hash, location: ChunkLocation(pack: pack, offset: UInt32(off), storedLength: UInt32(h.storedLength)))))
        off += len
    }
    return out
}

// MARK: known bugs shared by several targets (VDISKFS_FUZZ_SKIP_KNOWN=1)

/// Known bugs an intact-checksum pack (already fixed up) triggers when a store opens and
/// reads it: none left (a tree entry naming a member its grouped record does not have was
/// one, fixed in 7217699).
public func knownPackBug(_ b: [UInt8]) -> String? { nil }

/// The ref of the first record of `kind` in a pack (filed as pack 1).
public func firstRecord(_ pack: [UInt8], kind: RecordKind) -> ChunkRef? {
    packRecords(pack).first(where: { $0.0 == kind })?.1
}

/// Directory stores (DirectoryBackend, the real one) in the scratch tmpfs.
public enum StoreFixture {
    /// The root bytes for `namespace` and `snapshots` (Store.commitOnce's layout).
    public static func root(namespace: ChunkRef, snapshots: ChunkRef) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: Store.rootSize)
        b.replaceSubrange(0..<8, with: Store.rootMagic)
        putLE32(&b, 8, 1)
        putLE64(&b, 12, 1)
        putLE64(&b, 20, 1_700_000_000_000_000_000)
        b.withUnsafeMutableBytes { namespace.store(to: $0.baseAddress! + 28); snapshots.store(to: $0.baseAddress! + 76) }
        putLE32(&b, b.count - 4, crc(b, 0..<(b.count - 4)))
        return b
    }

    /// The root a commit of `pack` would have left: its first namespace and snapshot-table records.
    public static func root(for pack: [UInt8]) -> [UInt8] {
        let records = packRecords(pack)
        return root(namespace: records.first(where: { $0.0 == .namespace })?.1 ?? .zero,
                    snapshots: records.first(where: { $0.0 == .snapshotTable })?.1 ?? .zero)
    }

    /// Lays out a directory store at `path` (emptied first) whose only pack is `pack`, filed as
    /// pack `number`, with root `root` (default: `root(for: pack)`) and index file `index`
    /// (nil: none, so that Store.open rebuilds it from the pack).
    public static func make(at path: String, pack: [UInt8], number: UInt64 = 1, root: [UInt8]? = nil, index: [UInt8]? = nil) {
        try? FileManager.default.removeItem(atPath: path)
        for d in ["packs", "roots", "index"] {
            try! FileManager.default.createDirectory(atPath: path + "/" + d, withIntermediateDirectories: true)
        }
        writeFile(path + "/vdiskfs.json", Array(#"{"format": "vdiskfs", "version": \#(Store.formatVersion), "id": "00112233445566778899aabbccddeeff"}"#.utf8))
        writeFile(path + "/packs/" + PackFormat.fileName(number), pack)
        writeFile(path + "/roots/current", root ?? Self.root(for: pack))
        if let index { writeFile(path + "/index/chunks", index) }
    }

    /// A backend over a scratch store holding just `pack` as pack `number` (for pack readers).
    public static func packDirectory(pack: [UInt8], number: UInt64) -> DirectoryBackend {
        let path = scratchDirectory + "/packs-only"
        try? FileManager.default.removeItem(atPath: path + "/packs")
        try! FileManager.default.createDirectory(atPath: path + "/packs", withIntermediateDirectories: true)
        writeFile(path + "/packs/" + PackFormat.fileName(number), pack)
        return DirectoryBackend(path: path)
    }
}
