import CSupport
import Foundation
import Glibc
import SystemPackage

/// The flusher: freezing the journal, moving blocks into the store, committing.
extension Volume {
    /// Garbage collection on the mounted store: flushes, then collects while commits are held
    /// off. Besides the committed images and snapshots, chunks named by journal refs (from
    /// copy_file_range) and the trees of unlinked images still open stay live. Writes go on
    /// into the journal meanwhile.
    public func collectGarbage(threshold: Double, dryRun: Bool) throws -> CollectionPlan {
        if isShared {
            throw StoreError.busy(name: "\(store.path) is shared: gc runs with the store unmounted on every host, not through a mount")
        }
        flushLock.lock(); defer { flushLock.unlock() }
        try flushLocked()
        var alsoLive = Set<ChunkHash>()
        var journaled: [(WriteJournal.Segment, Int64)] = []
        let orphans: [ImageRoot] = stateLock.withLock {
            for n in nodes.values {
                for d in n.dirty.values { if case .ref(let seg, let off) = d.kind { journaled.append((seg, off)) } }
                for d in n.frozen.values { if case .ref(let seg, let off) = d.kind { journaled.append((seg, off)) } }
            }
            return nodes.values.filter { !$0.isDirectory && $0.path == nil && $0.snapshot == nil }.map(\.root)
        }
        for r in try journalRefs(journaled) { alsoLive.insert(r.hash) }
        for root in orphans where !root.root.isZero {
            try GarbageCollector.markTree(store, root.root, level: Int(root.depth) - 1, live: &alsoLive)
        }
        let (plan, live) = try GarbageCollector.plan(store, threshold: threshold, alsoLive: alsoLive, mounted: true)
        if !dryRun {
            try GarbageCollector.execute(store, plan, live: live)
            stateLock.withLock { snapshotNamespaces.removeAll() }
        }
        return plan
    }

    /// Moves every dirty block into the store and commits.
    public func flush() throws {
        flushLock.lock(); defer { flushLock.unlock() }
        try flushLocked()
    }

    /// Freezes the current segment and flushes what is frozen. Call with `flushLock` held.
    func flushLocked() throws {
        let froze: Bool = try appendLock.withWriteLock {
            try stateLock.withLock {
                let changed = nodes.values.filter { !$0.isDirectory && (!$0.dirty.isEmpty || $0.liveSize != $0.root.size) }
                guard !changed.isEmpty else { return false }
                for n in changed {
                    if n.frozen.isEmpty {
                        n.frozen = n.dirty
                        n.frozenData = n.dirtyData
                    } else {
                        n.frozen.merge(n.dirty) { _, new in new }
                        n.frozenData = n.frozen.values.reduce(0) { $0 + (Self.isZero($1) ? 0 : 1) }
                    }
                    n.dirty = [:]
                    n.dirtyData = 0
                    n.frozenSize = n.liveSize
                    n.frozenPending = true
                }
                frozenSegments.append(segment)
                segment = try journal.createSegment(segment.sequence + 1)
                currentDirtyBlocks = 0
                countFrozenLocked()
                return true
            }
        }
        spaceFreed.lock(); spaceFreed.broadcast(); spaceFreed.unlock()
        // A failed earlier flush leaves frozen work behind: retry it even with nothing new.
        if froze || stateLock.withLock({ nodes.values.contains { $0.frozenPending } }) { try flushFrozen() }
    }

    /// Stores every frozen block, updates the trees, commits, deletes the frozen segments.
    /// Call with `flushLock` held. On failure nothing is lost: the frozen blocks stay in the
    /// journal and the next flush tries again.
    func flushFrozen() throws {
        // Images whose lease was lost are not this host's to commit (shared stores).
        try confirmLeasesLocked()
        let work: [(Node, [UInt64: Dirty], UInt64, ImageRoot)] = stateLock.withLock {
            nodes.values.filter { !$0.isDirectory && $0.frozenPending }
                .map { ($0, $0.frozen, $0.frozenSize, $0.root) }
        }
        var roots: [NodeID: (ImageRoot, Int64)] = [:]
        do {
            for (n, frozen, size, root) in work {
                let bs = Int(root.blockSize)
                let blocks = frozen.keys.sorted()
                // Blocks go into the tree a window at a time, so that the per-block state
                // (changes, refs read back from the journal) stays small however many blocks
                // are frozen. Only the last window's tree is committed; the others' nodes are
                // garbage for gc (a few per window: blocks are taken in order).
                let window = max(1, options.flushWindow)
                // 1 MiB batches: the encoder holds about four times this (blocks, compressed
                // output, gathered group members), heap beyond the caches.
                let batch = max(1, (1 << 20) / bs)
                // Dirty blocks near each other are grouped as import groups them: the store
                // is smaller, and LZ4 runs faster over data that compresses.
                let encoder = BlockEncoder(blockSize: bs, capacity: batch,
                                           groupBytes: store.writesGroups ? Importer.defaultGroupBytes : 0)
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: batch * bs, alignment: 4096)
                defer { buffer.deallocate() }
                var pending: [UInt64] = []
                var tally = BlockEncoder.Tally()
                var changes: [(block: UInt64, ref: ChunkRef)] = []
                var journaled: [(block: UInt64, segment: WriteJournal.Segment, offset: Int64)] = []
                func drain() throws {
                    guard !pending.isEmpty else { return }
                    let refs = try encoder.store(UnsafeRawBufferPointer(buffer), count: pending.count, into: store, tally: &tally)
                    for (b, r) in zip(pending, refs) { changes.append((b, r)) }
                    pending.removeAll(keepingCapacity: true)
                }
                var tree = root
                var delta: Int64 = 0
                var start = 0
                repeat {
                    let end = min(blocks.count, start + window)
                    changes.removeAll(keepingCapacity: true)
                    journaled.removeAll(keepingCapacity: true)
                    for b in blocks[start..<end] where b * UInt64(bs) < size {
                        switch frozen[b]!.kind {
                        case .zero: changes.append((b, .zero))
                        case .ref(let seg, let off): journaled.append((b, seg, off))
                        case .data(let seg, let off):
                            let slot = UnsafeMutableRawBufferPointer(rebasing: buffer[(pending.count * bs)..<((pending.count + 1) * bs)])
                            guard try seg.fd.readFully(into: slot, at: off) == bs else {
                                throw StoreError.io(errno: EIO, context: "journal segment \(seg.path) is short")
                            }
                            pending.append(b)
                            if pending.count == batch { try drain() }
                        }
                    }
                    try drain()
                    for (j, r) in try journalRefs(journaled.map { ($0.segment, $0.offset) }).enumerated() { changes.append((journaled[j].block, r)) }
                    changes.sort { $0.block < $1.block }
                    // Writes only grow an image (frozenSize >= root.size); shrinking is
                    // setAttributes', which flushes first.
                    let (t, d) = try TreeUpdater.apply(store, to: tree, newSize: size, changes: changes)
                    tree = t
                    delta += d
                    start = end
                } while start < blocks.count
                roots[n.id] = (tree, delta)
            }
            try commitNamespace(roots: roots.mapValues { $0.0 })
        } catch {
            let e = StoreError.system(error, "flush", path: store.path)
            stateLock.withLock { lastFlushError = e }
            try? store.rollback()
            log("vdiskfs: flush failed, dirty data stays in the journal: \(e.description)")
            throw e
        }
        let done: [WriteJournal.Segment] = stateLock.withLock {
            for (n, _, _, _) in work where n.frozenPending {
                guard let (r, delta) = roots[n.id] else { continue }
                n.root = r
                if let a = n.allocatedBlocks { n.allocatedBlocks = a + delta }
                n.frozen = [:]
                n.frozenData = 0
                n.frozenPending = false
            }
            lastFlushError = nil
            let segs = frozenSegments
            frozenSegments = []
            countFrozenLocked()
            return segs
        }
        for s in done { journal.delete(s) }
        vdisk_release_free_memory()
    }

    /// Recounts `frozenBlocks` and `frozenJournalBytes`. Call with `stateLock` held.
    func countFrozenLocked() {
        frozenBlocks = nodes.values.reduce(0) { $0 + $1.frozen.count }
        frozenJournalBytes = frozenSegments.reduce(0) { $0 + $1.size }
    }

    func wakeFlusher() {
        flusherWake.lock(); flushRequested = true; flusherWake.signal(); flusherWake.unlock()
    }

    func flusherLoop() {
        while true {
            flusherWake.lock()
            if !stopping && !flushRequested { _ = flusherWake.wait(until: Date().addingTimeInterval(options.flushInterval)) }
            flushRequested = false
            let stop = stopping
            flusherWake.unlock()
            if stop { return }
            do { try flush() } catch {
                // Logged by flushFrozen; try again at the next tick.
            }
            if isShared {
                // Take other hosts' commits; give back the leases of idle images.
                flushLock.lock()
                do {
                    try confirmLeasesLocked()
                    try refreshLocked()
                } catch { log("vdiskfs: cannot read the store's root or renew leases: \(error)") }
                releaseIdleLeasesLocked()
                flushLock.unlock()
            }
        }
    }

    /// Flushes and stops the flusher; the volume is unusable afterwards.
    public func close() throws {
        flusherWake.lock(); stopping = true; flusherWake.signal(); flusherWake.unlock()
        while let t = flusher, !t.isFinished { usleep(1000) }
        try flush()
        releaseAllLeases()
        stateLock.withLock { closed = true }
        spaceFreed.lock(); spaceFreed.broadcast(); spaceFreed.unlock()
        // Everything is committed: the current (empty) segment can go.
        if stateLock.withLock({ !nodes.values.contains { $0.hasDirtyBlocks } && frozenSegments.isEmpty }) {
            journal.delete(segment)
            if isShared { try? store.backend.noteJournal(journalID, pending: false) }
        }
        store.close()
    }
}
