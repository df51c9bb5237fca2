import Foundation

/// What `verify` found.
public struct VerifyReport: Codable, Sendable {
    public var packs = 0
    public var records = 0
    public var packBytes: Int64 = 0
    public var images = 0
    public var treeNodes = 0
    /// One line per damaged record: pack, offset, hash, what is wrong.
    public var damagedChunks: [String] = []
    /// Images that reference damaged or missing chunks, with the first problem found.
    public var damagedImages: [String: String] = [:]
    /// Packs whose end holds bytes that are not whole records (a crash during a write).
    public var tornTails: [String] = []

    public var isClean: Bool { damagedChunks.isEmpty && damagedImages.isEmpty }

    enum CodingKeys: String, CodingKey {
        case packs, records, images
        case packBytes = "pack_bytes", treeNodes = "tree_nodes", damagedChunks = "damaged_chunks"
        case damagedImages = "damaged_images", tornTails = "torn_tails"
    }
}

/// Checks a whole store: every record of every pack is re-hashed with SHA-256 (not just its
/// crc32c), and every image's tree is walked to check that each chunk it names is there.
public enum Verifier {
    public static func verify(_ store: Store, progress: ((Int64, Int64) -> Void)? = nil) throws -> VerifyReport {
        var report = VerifyReport()
        let numbers = try store.packNumbers()
        var total: Int64 = 0
        for p in numbers { total += try store.backend.packSize(p) ?? 0 }
        var done: Int64 = 0
        var damaged = Set<ChunkLocation>()
        var scratch = [UInt8](repeating: 0, count: PackFormat.maxRecordLength)
        for pack in numbers {
            let file = PackFormat.fileName(pack)
            let scanned: (end: Int64, fileLength: Int64)
            do {
                scanned = try PackScanner.scan(store.backend, pack: pack, withPayloads: true) { rec in
                    report.records += 1
                    let what = "pack \(file) offset \(rec.ref.location.offset) \(rec.kind) \(rec.ref.hash.short)"
                        + (rec.members.count > 1 ? " (a group of \(rec.members.count) chunks)" : "")
                    guard rec.checksumOK else {
                        report.damagedChunks.append("\(what): checksum mismatch")
                        for m in rec.members { damaged.insert(m.location) }
                        return
                    }
                    // Every chunk re-hashed: each member of a grouped record against its own hash.
                    let bad = scratch.withUnsafeMutableBytes { out -> [ChunkRef] in
                        let o = UnsafeMutableRawBufferPointer(rebasing: out[0..<rec.rawLength])
                        guard Compression.decompress(rec.codec, UnsafeRawBufferPointer(rebasing: rec.bytes[rec.encodedStart...]), into: o) else { return rec.members }
                        let length = rec.rawLength / rec.members.count
                        return rec.members.enumerated().filter { m, ref in
                            ChunkHash.of(UnsafeRawBufferPointer(rebasing: o[(m * length)..<((m + 1) * length)])) != ref.hash
                        }.map { $0.1 }
                    }
                    if !bad.isEmpty {
                        report.damagedChunks.append("\(what): content does not match its SHA-256"
                                                    + (rec.members.count > 1 ? " (\(bad.count) of its chunks)" : ""))
                        for m in bad { damaged.insert(m.location) }
                    }
                }
            } catch let e as StoreError {
                report.damagedChunks.append("pack \(file): \(e.description)")
                continue
            }
            report.packs += 1
            report.packBytes += scanned.fileLength
            if scanned.end < scanned.fileLength {
                report.tornTails.append("pack \(file): \(scanned.fileLength - scanned.end) bytes after offset \(scanned.end) are not whole records")
            }
            done += scanned.fileLength
            progress?(done, total)
        }

        // Walk every tree; shared subtrees are checked once.
        var checkedNodes = Set<ChunkHash>()
        // Live images, then every snapshot's (shared subtrees are checked once).
        var trees: [(String, ImageRoot)] = store.namespace.images(under: "").compactMap { n in store.namespace.entries[n]?.image.map { (n, $0) } }
        do {
            for snap in try store.snapshots() {
                let ns = try store.namespace(ofSnapshot: snap.name)
                trees += ns.images(under: "").compactMap { n in ns.entries[n]?.image.map { ("@\(snap.name)/\(n)", $0) } }
            }
        } catch let e as StoreError {
            report.damagedImages["(snapshots)"] = e.description
        }
        for (name, image) in trees {
            report.images += 1
            do {
                try checkTree(store, image.root, level: Int(image.depth) - 1, damaged: damaged, checked: &checkedNodes, report: &report)
            } catch let e as StoreError {
                report.damagedImages[name] = e.description
            }
        }
        return report
    }

    private static func checkTree(_ store: Store, _ ref: ChunkRef, level: Int, damaged: Set<ChunkLocation>,
                                  checked: inout Set<ChunkHash>, report: inout VerifyReport) throws {
        if ref.isZero || checked.contains(ref.hash) { return }
        if damaged.contains(ref.location) { throw StoreError.damagedChunk(detail: "tree node \(ref.hash.short) is damaged") }
        let node = try TreeNode.decode(try store.readRecord(ref, kind: .tree), what: "tree node \(ref.hash.short)")
        report.treeNodes += 1
        guard Int(node.level) == level else { throw StoreError.damagedChunk(detail: "tree node \(ref.hash.short) is at the wrong level") }
        for r in node.refs where !r.isZero {
            if level > 0 {
                try checkTree(store, r, level: level - 1, damaged: damaged, checked: &checked, report: &report)
            } else {
                if damaged.contains(r.location) { throw StoreError.damagedChunk(detail: "chunk \(r.hash.short) is damaged") }
                guard store.recordIsPresent(r, kind: .data) else {
                    throw StoreError.damagedChunk(detail: "chunk \(r.hash.short) is missing from pack \(PackFormat.fileName(r.location.pack))")
                }
            }
        }
        checked.insert(ref.hash)
    }
}

extension Store {
    /// Whether the record `ref` names is where it says (or where the index says), by its header.
    func recordIsPresent(_ ref: ChunkRef, kind: RecordKind) -> Bool {
        func at(_ loc: ChunkLocation) -> Bool {
            // The header, and a grouped record's hash table.
            var header = [UInt8](repeating: 0, count: PackFormat.recordHeaderSize + (loc.memberCount - 1) * 32)
            guard let n = try? header.withUnsafeMutableBytes({ try backend.readPack(loc.pack, at: Int64(loc.offset), into: $0) }),
                  n == header.count, let parsed = header.withUnsafeBytes({ PackFormat.loadRecordHeader($0.baseAddress!) }),
                  parsed.memberCount == loc.memberCount
            else { return false }
            let hash = header.withUnsafeBytes { PackFormat.memberHash($0.baseAddress!, parsed, loc.member) }
            return hash == ref.hash && parsed.kind == kind && parsed.storedLength == Int(loc.storedLength)
        }
        if at(ref.location) { return true }
        if let loc = index.lookup(ref.hash), loc != ref.location { return at(loc) }
        return false
    }
}
