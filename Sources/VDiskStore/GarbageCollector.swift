import Foundation
import Glibc

/// What garbage collection will do (the plan `--dry-run` prints) or did.
public struct CollectionPlan: Codable, Sendable {
    /// Packs with no live record: deleted.
    public var packsToDelete: [String] = []
    /// Packs whose live share is below the threshold: live records copied out, then deleted.
    public var packsToRewrite: [String] = []
    /// Bytes of the packs above, and the live bytes that move.
    public var bytesToFree: Int64 = 0
    public var liveBytesToMove: Int64 = 0
    public var liveChunks = 0
    public var packsKept = 0

    enum CodingKeys: String, CodingKey {
        case packsToDelete = "packs_to_delete", packsToRewrite = "packs_to_rewrite", bytesToFree = "bytes_to_free"
        case liveBytesToMove = "live_bytes_to_move", liveChunks = "live_chunks", packsKept = "packs_kept"
    }
}

/// Garbage collection, plan then execute (as restic's prune):
///
/// 1. Mark: every record reachable from the committed namespace, the snapshot table and
///    every snapshot: namespaces, tree nodes, chunks. (Memory: one hash per live record.)
/// 2. Plan: per pack, the bytes of records that are live *at that location* (a chunk stored
///    twice lives once; a grouped record counts its live members' share). Packs with nothing live are deleted; packs below `threshold` live
///    are rewritten.
/// 3. Execute: copy live records of rewritten packs into new packs (a grouped record with
///    dead members: its live members, decoded and encoded again) and fsync them; point the
///    index at the copies; commit (a fresh root and snapshot table); then delete the old
///    packs. A crash at any step leaves a store that opens and verifies: new packs not yet
///    indexed are orphans for the next gc, and old packs go only after the index moved.
///    Tree entries that named a moved chunk reach it through the index from then on.
///
/// The store must be opened for writing (no mount), and a mount's journal in STORE/journal
/// must have been replayed (mount and unmount once) so no acknowledged write is lost.
public enum GarbageCollector {
    /// `alsoLive`: hashes a running mount still needs beyond the committed state (journal
    /// refs, trees of unlinked open images); a mount passes them and `mounted: true`.
    public static func plan(_ store: Store, threshold: Double = 0.5, alsoLive: Set<ChunkHash> = [], mounted: Bool = false,
                            progress: ((Int64, Int64) -> Void)? = nil) throws -> (CollectionPlan, live: Set<ChunkHash>) {
        let journal = store.localDirectory + "/journal"
        if !mounted, let segments = try? FileIO.list(journal), segments.contains(where: { $0.hasPrefix("journal-") && $0.hasSuffix(".log") }) {
            throw StoreError.busy(name: "\(store.path) has a mount's journal to replay: mount and unmount it first")
        }
        if store.backend.isShared && store.access == .readWrite {
            // (A dry run may plan beside live mounts; gc itself holds the exclusive lock, so a
            // journal noted now is a crashed mount's.)
            let journals = try store.backend.pendingJournals()
            if !journals.isEmpty {
                throw StoreError.busy(name: "store \(store.path) (the journal of a crashed mount waits to be replayed: \(journals.joined(separator: ", ")); mount and unmount there first)")
            }
        }
        // Nothing may be appended to a pack the plan could delete: new records (gc's copies
        // included) go to a fresh pack from here on.
        if store.access == .readWrite { try store.withWriter { w in try w.sealCurrent() } }
        var live = try mark(store)
        live.formUnion(alsoLive)
        var plan = CollectionPlan()
        plan.liveChunks = live.count
        let numbers = try store.packNumbers()
        var total: Int64 = 0
        for p in numbers { total += try store.backend.packSize(p) ?? 0 }
        var done: Int64 = 0
        for pack in numbers {
            var liveBytes: Int64 = 0
            let (_, length) = try PackScanner.scan(store.backend, pack: pack, withPayloads: false) { rec in
                // (A grouped record counts its live members' share: execute keeps only those.)
                let n = rec.members.count == 1 ? (isLive(rec.ref, store: store, live: live) ? 1 : 0)
                    : rec.members.reduce(0) { $0 + (isLive($1, store: store, live: live) ? 1 : 0) }
                liveBytes += Int64(rec.ref.location.recordLength * n / rec.members.count)
            }
            let name = PackFormat.fileName(pack)
            if liveBytes == 0 {
                plan.packsToDelete.append(name)
                plan.bytesToFree += length
            } else if !store.backend.isShared && Double(liveBytes) < threshold * Double(length - Int64(PackFormat.headerSize)) {
                // (A shared store's packs are only deleted whole: live chunks never move, so
                // every host's trees keep naming where they are.)
                plan.packsToRewrite.append(name)
                plan.bytesToFree += length - liveBytes
                plan.liveBytesToMove += liveBytes
            } else {
                plan.packsKept += 1
            }
            done += length
            progress?(done, total)
        }
        return (plan, live)
    }

    /// A record is live where the index says its hash lives (so duplicates are not kept twice).
    private static func isLive(_ ref: ChunkRef, store: Store, live: Set<ChunkHash>) -> Bool {
        guard live.contains(ref.hash) else { return false }
        return store.index.lookup(ref.hash) == ref.location || store.index.lookup(ref.hash) == nil
    }

    /// Every hash reachable from the root file.
    static func mark(_ store: Store) throws -> Set<ChunkHash> {
        var live = Set<ChunkHash>()
        var namespaces: [Namespace] = [store.namespace]
        live.insert(store.namespaceRef.hash)
        if !store.snapshotTableRef.isZero {
            live.insert(store.snapshotTableRef.hash)
            for snap in try store.snapshots() {
                live.insert(snap.namespace.hash)
                namespaces.append(try Namespace.decode(try store.readRecord(snap.namespace, kind: .namespace)))
            }
        }
        for ns in namespaces {
            for name in ns.images(under: "") {
                guard let image = ns.entries[name]?.image else { continue }
                try markTree(store, image.root, level: Int(image.depth) - 1, live: &live)
            }
        }
        return live
    }

    static func markTree(_ store: Store, _ ref: ChunkRef, level: Int, live: inout Set<ChunkHash>) throws {
        if ref.isZero || live.contains(ref.hash) { return }
        live.insert(ref.hash)
        let node = try TreeNode.decode(try store.readRecord(ref, kind: .tree), what: "tree node \(ref.hash.short)")
        for r in node.refs where !r.isZero {
            if level > 0 { try markTree(store, r, level: level - 1, live: &live) } else { live.insert(r.hash) }
        }
    }

    /// Carries out a plan made by ``plan(_:threshold:progress:)`` on the same store.
    public static func execute(_ store: Store, _ plan: CollectionPlan, live: Set<ChunkHash>,
                               progress: ((Int64, Int64) -> Void)? = nil) throws {
        if store.backend.isShared { try store.backend.removeLeaseObjects() }
        let rewrite = plan.packsToRewrite.compactMap(PackFormat.packNumber(fileName:))
        let delete = plan.packsToDelete.compactMap(PackFormat.packNumber(fileName:))
        guard !rewrite.isEmpty || !delete.isEmpty else { return }
        try store.withWriter { w in try w.sealCurrent() }
        // 1. Copy live records out of the packs being rewritten; make the copies durable.
        var moved: [(ChunkHash, ChunkLocation)] = []
        var done: Int64 = 0
        for pack in rewrite {
            try PackScanner.scan(store.backend, pack: pack, withPayloads: true) { rec in
                let liveMembers = rec.members.filter { isLive($0, store: store, live: live) }
                guard rec.checksumOK, !liveMembers.isEmpty else { return }
                if liveMembers.count < rec.members.count {
                    // A grouped record with dead members: its live ones are encoded again, alone.
                    moved += try store.copyLiveMembers(rec, liveMembers)
                } else {
                    let payload = UnsafeRawBufferPointer(rebasing: rec.bytes[PackFormat.recordHeaderSize...])
                    let loc = try store.appendCopy(kind: rec.kind, hash: rec.ref.hash, codec: rec.codec, rawLength: rec.rawLength,
                                                   payload: payload, members: rec.members.count)
                    for m in liveMembers { moved.append((m.hash, loc.withMember(m.location.member))) }
                }
                done += Int64(rec.ref.location.recordLength)
                progress?(done, plan.liveBytesToMove)
            }
        }
        try store.synchronizePacks()
        // 2. The index follows the copies, then forgets the packs that go.
        for (h, loc) in moved { store.index.insert(h, loc) }
        try store.index.flush()
        let going = Set(rewrite + delete)
        try store.index.remove { going.contains($0.pack) }
        // 3. A fresh root: namespace and snapshot table rewritten where they now live.
        try store.commit(store.namespace, snapshots: try store.snapshots())
        // 4. Only now the old packs go.
        try store.backend.recordCollectedPacks(Array(going).sorted())
        try store.backend.removePacks(Array(going).sorted())
        try store.backend.removePackSummaries(Array(going).sorted())
        store.packs.closeAll()
        store.nodeCache.removeAll()
    }
}

extension Store {
    /// Appends an already-encoded record (garbage collection's copies). Not deduplicated.
    func appendCopy(kind: RecordKind, hash: ChunkHash, codec: Codec, rawLength: Int, payload: UnsafeRawBufferPointer,
                    members: Int = 1) throws -> ChunkLocation {
        try withWriter { w in try w.append(kind: kind, hash: hash, codec: codec, rawLength: rawLength, payload: payload, members: members) }
    }

    /// Decodes grouped record `rec` (scanned with its payload) and appends its `live`
    /// members again, as one smaller group or a record of their own; returns where each went.
    func copyLiveMembers(_ rec: PackScanner.Record, _ live: [ChunkRef]) throws -> [(ChunkHash, ChunkLocation)] {
        let length = rec.rawLength / rec.members.count
        return try withUnsafeTemporaryAllocation(byteCount: rec.rawLength + live.count * length, alignment: 16) { buf in
            let all = UnsafeMutableRawBufferPointer(rebasing: buf[0..<rec.rawLength])
            guard Compression.decompress(rec.codec, UnsafeRawBufferPointer(rebasing: rec.bytes[rec.encodedStart...]), into: all) else {
                throw StoreError.damagedChunk(detail: "\(PackReader.describe(rec.ref, .data)) does not decompress")
            }
            let kept = UnsafeMutableRawBufferPointer(rebasing: buf[rec.rawLength...])
            for (k, m) in live.enumerated() {
                (kept.baseAddress! + k * length).copyMemory(from: all.baseAddress! + m.location.member * length, byteCount: length)
            }
            let raw = UnsafeRawBufferPointer(rebasing: kept[0..<(live.count * length)])
            return try withUnsafeTemporaryAllocation(byteCount: GroupEncoding.bound(members: live.count, rawLength: raw.count), alignment: 16) { out in
                let (codec, n) = GroupEncoding.encode(hashes: live.map(\.hash), raw: raw, into: out)
                let loc = try appendCopy(kind: .data, hash: live[0].hash, codec: codec, rawLength: raw.count,
                                         payload: UnsafeRawBufferPointer(rebasing: out[0..<n]), members: live.count)
                return live.enumerated().map { k, m in (m.hash, loc.withMember(k)) }
            }
        }
    }

    /// Makes every appended record durable.
    func synchronizePacks() throws { try withWriter { w in try w.synchronize() } }
}
