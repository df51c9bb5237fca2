import CSupport
import Foundation
import Glibc
import SystemPackage

/// Writing: journal appends, partial blocks, holes, seek, copy_file_range.
extension Volume {
    static func isZero(_ d: Dirty) -> Bool { d.isZero }

    /// The ChunkRefs of journal ref records, by (segment, payload offset): dirty maps keep
    /// only where a shared chunk's ref is, and it is read back when needed. Nearby records
    /// (copy_file_range writes them in runs) are read together.
    func journalRefs(_ locations: [(WriteJournal.Segment, Int64)]) throws -> [ChunkRef] {
        var refs = [ChunkRef](repeating: .zero, count: locations.count)
        guard !locations.isEmpty else { return refs }
        let order = locations.indices.sorted { a, b in
            let (x, y) = (locations[a], locations[b])
            return x.0.sequence != y.0.sequence ? x.0.sequence < y.0.sequence : x.1 < y.1
        }
        let span = 64 << 10, size = ChunkRef.encodedSize
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: locations.count == 1 ? size : span, alignment: 16)
        defer { buffer.deallocate() }
        var held: (segment: WriteJournal.Segment, start: Int64, count: Int)?
        for (k, i) in order.enumerated() {
            let (seg, off) = locations[i]
            if let h = held, h.segment === seg, off >= h.start, off + Int64(size) <= h.start + Int64(h.count) {
                // In the span read last.
            } else {
                // Read up to the last of the following records that fit in one span.
                var end = off + Int64(size)
                var j = k + 1
                while j < order.count, locations[order[j]].0 === seg, locations[order[j]].1 + Int64(size) <= off + Int64(span) {
                    end = max(end, locations[order[j]].1 + Int64(size))
                    j += 1
                }
                let want = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(end - off)])
                guard try seg.fd.readFully(into: want, at: off) == want.count else {
                    throw StoreError.io(errno: EIO, context: "journal segment \(seg.path) is short")
                }
                held = (seg, off, want.count)
            }
            refs[i] = ChunkRef(loading: buffer.baseAddress! + Int(off - held!.start))
        }
        return refs
    }


    /// Appends block writes for `n` to the journal and records them as dirty; with
    /// `clearingSetID`, the write also clears the set-user-ID and set-group-ID bits
    /// (see ``modeClearingSetID(_:)``). Call with `n.writeLock` held.
    func append(_ n: Node, _ writes: [(UInt64, BlockWrite)], sizeAfter: UInt64, clearingSetID: Bool = false) throws {
        try waitForJournalSpace()
        let path = Array((stateLock.withLock { n.path } ?? "").utf8)
        var total = 0
        for (_, w) in writes {
            switch w {
            case .bytes(let b): total += WriteJournal.recordSize(pathBytes: path.count, payload: b.count)
            case .ref: total += WriteJournal.recordSize(pathBytes: path.count, payload: ChunkRef.encodedSize)
            case .zero, .size: total += WriteJournal.recordSize(pathBytes: path.count, payload: 0)
            }
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: total, alignment: 4096)
        defer { buffer.deallocate() }
        var payloadOffsets: [Int] = []
        var at = 0
        for (b, w) in writes {
            let p = buffer.baseAddress! + at
            switch w {
            case .bytes(let data):
                payloadOffsets.append(at + WriteJournal.encode(to: p, kind: .data, path: path, block: b, sizeAfter: sizeAfter, payload: data))
                at += WriteJournal.recordSize(pathBytes: path.count, payload: data.count)
            case .ref(let r):
                var bytes = [UInt8](repeating: 0, count: ChunkRef.encodedSize)
                bytes.withUnsafeMutableBytes { r.store(to: $0.baseAddress!) }
                payloadOffsets.append(at + bytes.withUnsafeBytes { WriteJournal.encode(to: p, kind: .ref, path: path, block: b, sizeAfter: sizeAfter, payload: $0) })
                at += WriteJournal.recordSize(pathBytes: path.count, payload: ChunkRef.encodedSize)
            case .zero, .size:
                let kind: WriteJournal.Kind = { if case .zero = w { return .zero } else { return .size } }()
                _ = WriteJournal.encode(to: p, kind: kind, path: path, block: b, sizeAfter: sizeAfter, payload: UnsafeRawBufferPointer(start: nil, count: 0))
                payloadOffsets.append(0)
                at += WriteJournal.recordSize(pathBytes: path.count, payload: 0)
            }
        }
        var modeChanged: (@Sendable (NodeID) -> Void)?
        // A ticket before the reservation: an fsync that starts later waits for this write.
        appendsInFlight.lock()
        let ticket = nextAppendTicket
        nextAppendTicket += 1
        appendTickets.insert(ticket)
        appendsInFlight.unlock()
        defer {
            appendsInFlight.lock()
            appendTickets.remove(ticket)
            appendsInFlight.broadcast()
            appendsInFlight.unlock()
        }
        try appendLock.withReadLock {
            let (seg, base) = try reserveJournal(total)
            beforeJournalWriteForTesting?()
            do { try seg.fd.writeFully(UnsafeRawBufferPointer(buffer), at: base) }
            catch {
                // Leaves a hole that replay stops at (the space was allocated ahead, so this
                // is an I/O error, not a full disk); nothing was acknowledged.
                throw StoreError.system(error, "write journal", path: journal.directory)
            }
            stateLock.withLock {
                for (i, (b, w)) in writes.enumerated() {
                    let new: Dirty
                    switch w {
                    case .bytes: new = .data(seg, base + Int64(payloadOffsets[i]))
                    case .zero: new = .zero
                    case .ref: new = .ref(seg, base + Int64(payloadOffsets[i]))
                    case .size: continue
                    }
                    if let old = n.dirty.updateValue(new, forKey: b) {
                        if !Self.isZero(old) { n.dirtyData -= 1 }
                    } else {
                        currentDirtyBlocks += 1
                    }
                    if !Self.isZero(new) { n.dirtyData += 1 }
                }
                n.liveSize = max(n.liveSize, sizeAfter)
                if clearingSetID, case let cleared = Self.modeClearingSetID(n.mode), cleared != n.mode {
                    n.mode = cleared
                    modeChanged = invalidateAttributes
                }
                let t = now()
                n.mtime = t
                n.ctime = t
            }
        }
        // The kernel caches the mode; a cleared set-ID bit must not outlive this write there.
        modeChanged?(n.id)
        if stateLock.withLock({ segment.size > options.flushThreshold || currentDirtyBlocks > maxDirtyBlocks / 4 }) { wakeFlusher() }
    }

    /// Bytes the journal allocates ahead at a time.
    static let journalAllocationStep: Int64 = 16 << 20

    /// Reserves `bytes` at the end of the current segment for an append (call with
    /// `appendLock` shared). The segment's disk space is allocated ahead, 16 MiB at a time,
    /// so that a full disk fails here, before anything is placed: a write that failed
    /// after its place was taken would leave a hole at which replay stops, and every
    /// record after it, acknowledged or not, would be lost in a crash.
    func reserveJournal(_ bytes: Int) throws -> (WriteJournal.Segment, Int64) {
        let want = Int64(bytes)
        while true {
            let placed: (WriteJournal.Segment, Int64)? = stateLock.withLock {
                let s: WriteJournal.Segment = segment
                guard !s.allocatesAhead || s.size + want <= s.allocated else { return nil }
                let at = s.size
                s.size += want
                return (s, at)
            }
            if let placed { return placed }
            try journalGrowth.withLock {
                // The segment cannot change while appendLock is held shared.
                let (s, end, allocated) = stateLock.withLock { (segment!, segment.size, segment.allocated) }
                guard s.allocatesAhead, end + want > allocated else { return }
                let needed = (end + want - allocated + 4095) / 4096 * 4096
                var grown: Int64 = 0
                do {
                    for length in [max(Self.journalAllocationStep, needed), needed] {
                        do {
                            if try !s.fd.reserveSpace(at: allocated, length: length) { break }
                            grown = length
                            break
                        } catch let e as Errno where e == .noSpace && length != needed {
                            continue  // too little room for a whole step: just this append
                        }
                    }
                } catch {
                    throw StoreError.system(error, "allocate journal space", path: journal.directory)
                }
                stateLock.withLock {
                    if grown > 0 { s.allocated += grown } else { s.allocatesAhead = false }
                }
            }
        }
    }

    /// Dirty blocks writers may have before they wait: as many as the journal limit holds,
    /// less 1/32 for writes already past the check (8 threads × 256 blocks), so that a map
    /// of that many entries does not double its table.
    static func maxDirtyBlocks(_ options: VolumeOptions) -> Int { Int(options.journalLimit / 4096) * 31 / 32 }
    var maxDirtyBlocks: Int { Self.maxDirtyBlocks(options) }

    func journalFull() -> Bool {
        stateLock.withLock {
            segment.size + frozenJournalBytes > options.journalLimit || currentDirtyBlocks + frozenBlocks > maxDirtyBlocks
        }
    }

    func waitForJournalSpace() throws {
        guard journalFull() else { return }
        spaceFreed.lock()
        defer { spaceFreed.unlock() }
        while journalFull() {
            if closed { throw StoreError.io(errno: EIO, context: "volume closed") }
            // Again each time: the flush that ended may have started before these blocks.
            wakeFlusher()
            _ = spaceFreed.wait(until: Date().addingTimeInterval(1))
            if let e = stateLock.withLock({ lastFlushError }), e.errno == ENOSPC { throw e }
        }
    }

    func writableImage(_ id: NodeID) throws -> Node {
        let n = try image(id)
        if let snap = n.snapshot { throw StoreError.readOnly(name: Self.snapshotsName + "/" + snap) }
        try ensureLease(n)
        return n
    }

    /// An image node, live or in a snapshot.
    func image(_ id: NodeID) throws -> Node {
        let n = try node(id)
        guard !n.isDirectory else { throw StoreError.io(errno: EISDIR, context: "not a file") }
        return n
    }

    /// Writes `data` at `offset`, extending the file if needed; returns the bytes written.
    /// `clearingSetID`: the writer lacks CAP_FSETID, so the write clears the set-user-ID and
    /// set-group-ID bits as a write on Linux does (the mount asks the kernel to leave this
    /// to the file system, FUSE_HANDLE_KILLPRIV_V2).
    public func write(_ id: NodeID, offset: UInt64, data: UnsafeRawBufferPointer, clearingSetID: Bool = false) throws -> Int {
        let n = try writableImage(id)
        guard data.count > 0 else { return 0 }
        guard offset + UInt64(data.count) <= Self.maxSize else { throw StoreError.io(errno: EFBIG, context: "write") }
        n.writeLock.lock(); defer { n.writeLock.unlock() }
        let bs = Int(stateLock.withLock { n.root.blockSize })
        let end = offset + UInt64(data.count)
        let first = offset / UInt64(bs), last = (end - 1) / UInt64(bs)
        // Partial blocks at the edges are merged with their current bytes.
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 2 * bs, alignment: 4096)
        defer { scratch.deallocate() }
        var writes: [(UInt64, BlockWrite)] = []
        writes.reserveCapacity(Int(last - first + 1))
        for b in first...last {
            let start = b * UInt64(bs)
            let lo = Int(max(offset, start) - start)
            let hi = Int(min(end, start + UInt64(bs)) - start)
            let src = UnsafeRawBufferPointer(rebasing: data[Int(start + UInt64(lo) - offset)..<Int(start + UInt64(hi) - offset)])
            var block: UnsafeRawBufferPointer
            if lo == 0 && hi == bs {
                block = src
            } else {
                let slot = UnsafeMutableRawBufferPointer(rebasing: scratch[(b == first ? 0 : bs)..<(b == first ? bs : 2 * bs)])
                try readWholeBlock(n, b, into: slot)
                (slot.baseAddress! + lo).copyMemory(from: src.baseAddress!, byteCount: hi - lo)
                block = UnsafeRawBufferPointer(slot)
            }
            writes.append((b, isAllZero(block) ? .zero : .bytes(block)))
        }
        try append(n, writes, sizeAfter: max(stateLock.withLock { n.liveSize }, end), clearingSetID: clearingSetID)
        return data.count
    }

    /// Largest image size (tree depth 8 would allow more; this keeps offsets sane).
    public static let maxSize: UInt64 = 1 << 50

    /// Makes every acknowledged write (of `node`, or all when nil) durable before returning.
    public func synchronize(_ id: NodeID?, dataOnly: Bool) throws {
        // Appends placed before this call must be written first: one still being written
        // would be a hole before the records that follow it, and replay stops at a hole.
        appendsInFlight.lock()
        let started = nextAppendTicket
        while let oldest = appendTickets.min(), oldest < started { appendsInFlight.wait() }
        appendsInFlight.unlock()
        let segs: [WriteJournal.Segment] = stateLock.withLock { frozenSegments + [segment!] }
        for s in segs {
            do { try s.fd.synchronizeData() } catch { throw StoreError.system(error, "fsync journal", path: journal.directory) }
        }
    }

    /// Turns a byte range into zeros (whole blocks become zero blocks and free their chunks);
    /// the size does not change. FALLOC_FL_PUNCH_HOLE.
    public func punchHole(_ id: NodeID, offset: UInt64, length: UInt64) throws {
        let n = try writableImage(id)
        let size = stateLock.withLock { n.liveSize }
        guard offset < size, length > 0 else { return }
        try zero(n, from: offset, to: min(size, offset.addingReportingOverflow(length).overflow ? size : offset + length), sizeAfter: size)
    }

    /// Zeros a range, extending the size unless `keepSize`. FALLOC_FL_ZERO_RANGE.
    public func zeroRange(_ id: NodeID, offset: UInt64, length: UInt64, keepSize: Bool) throws {
        let n = try writableImage(id)
        let size = stateLock.withLock { n.liveSize }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, keepSize || end <= Self.maxSize else { throw StoreError.io(errno: EFBIG, context: "fallocate") }
        if offset < size { try zero(n, from: offset, to: min(size, end), sizeAfter: keepSize ? size : max(size, end)) }
        if !keepSize && end > size { try extend(n, to: end) }
    }

    /// posix_fallocate: extends the size to cover the range unless `keepSize` (no space is reserved).
    public func allocate(_ id: NodeID, offset: UInt64, length: UInt64, keepSize: Bool) throws {
        let n = try writableImage(id)
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= Self.maxSize else { throw StoreError.io(errno: EFBIG, context: "fallocate") }
        if !keepSize && end > stateLock.withLock({ n.liveSize }) { try extend(n, to: end) }
    }

    func extend(_ n: Node, to size: UInt64) throws {
        n.writeLock.lock(); defer { n.writeLock.unlock() }
        if size > stateLock.withLock({ n.liveSize }) { try append(n, [(0, .size)], sizeAfter: size) }
    }

    func zero(_ n: Node, from: UInt64, to: UInt64, sizeAfter: UInt64) throws {
        guard from < to else { return }
        n.writeLock.lock()
        let bs = UInt64(stateLock.withLock { n.root.blockSize })
        let firstFull = (from + bs - 1) / bs, endFull = to / bs
        var writes: [(UInt64, BlockWrite)] = []
        if firstFull < endFull { for b in firstFull..<endFull { writes.append((b, .zero)) } }
        do {
            if !writes.isEmpty {
                // Journal zero records in batches (each is a header only).
                for chunk in stride(from: 0, to: writes.count, by: 65536) {
                    try append(n, Array(writes[chunk..<min(chunk + 65536, writes.count)]), sizeAfter: max(stateLock.withLock { n.liveSize }, sizeAfter))
                }
            }
        } catch { n.writeLock.unlock(); throw error }
        n.writeLock.unlock()
        // Partial blocks at the edges: write zeros.
        func zeros(_ a: UInt64, _ b: UInt64) throws {
            guard a < b else { return }
            let z = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(b - a), alignment: 16)
            defer { z.deallocate() }
            z.initializeMemory(as: UInt8.self, repeating: 0)
            _ = try write(n.id, offset: a, data: UnsafeRawBufferPointer(z))
        }
        if firstFull >= endFull {
            try zeros(from, to)
        } else {
            try zeros(from, firstFull * bs)
            try zeros(endFull * bs, to)
        }
    }

    /// SEEK_DATA (`data` true) or SEEK_HOLE from `offset`; throws ENXIO past the end.
    public func seek(_ id: NodeID, offset: UInt64, data wantData: Bool) throws -> UInt64 {
        let n = try image(id)
        let (size, root, dirty): (UInt64, ImageRoot, [UInt64: Bool]) = stateLock.withLock {
            var d: [UInt64: Bool] = [:]
            for (b, v) in n.frozen { d[b] = !v.isZero }
            for (b, v) in n.dirty { d[b] = !v.isZero }
            return (n.liveSize, n.root, d)
        }
        guard offset < size else { throw StoreError.io(errno: ENXIO, context: "seek past the end") }
        let bs = UInt64(root.blockSize)
        let blocks = (size + bs - 1) / bs
        var b = offset / bs
        while b < blocks {
            let isData: Bool
            if let d = dirty[b] { isData = d }
            else if b >= root.blockCount { isData = false }
            else {
                // Skip a whole zero leaf at once.
                let leafFirst = b / UInt64(TreeNode.fanOut) * UInt64(TreeNode.fanOut)
                if root.depth >= 2, try leafIsZero(root, leafFirst), !dirty.keys.contains(where: { $0 >= b && $0 < leafFirst + UInt64(TreeNode.fanOut) }) {
                    if !wantData { return max(offset, b * bs) }
                    b = leafFirst + UInt64(TreeNode.fanOut)
                    continue
                }
                isData = !(try store.blockRef(root, b)).isZero
            }
            if isData == wantData { return max(offset, b * bs) }
            b += 1
        }
        if wantData { throw StoreError.io(errno: ENXIO, context: "no data after offset") }
        return size
    }

    func leafIsZero(_ root: ImageRoot, _ leafFirst: UInt64) throws -> Bool {
        var ref = root.root
        var level = Int(root.depth) - 1
        while level >= 1 {
            if ref.isZero { return true }
            let node = try store.readNode(ref)
            ref = node[Int((leafFirst / TreeNode.span(ofLevel: level)) % UInt64(TreeNode.fanOut))]
            level -= 1
        }
        return ref.isZero
    }

    /// copy_file_range: block-aligned parts share chunks instead of copying bytes.
    public func copyRange(from sourceID: NodeID, offset sourceOffset: UInt64, to targetID: NodeID, offset targetOffset: UInt64, length: UInt64) throws -> UInt64 {
        let src = try image(sourceID)
        let dst = try writableImage(targetID)
        let (srcSize, srcBS, dstBS) = stateLock.withLock { (src.liveSize, src.root.blockSize, dst.root.blockSize) }
        guard sourceOffset < srcSize else { return 0 }
        let len = min(length, srcSize - sourceOffset)
        let bs = UInt64(srcBS)
        var done: UInt64 = 0
        if srcBS == dstBS && sourceOffset % bs == 0 && targetOffset % bs == 0 && sourceID != targetID {
            // Share whole blocks: no bytes move, the target's tree will name the same chunks.
            let whole = len / bs
            var b: UInt64 = 0
            while b < whole {
                let count = min(whole - b, 4096)
                var writes: [(UInt64, BlockWrite)] = []
                var held: [UnsafeMutableRawBufferPointer] = []
                defer { held.forEach { $0.deallocate() } }
                // Refs the source's journal holds, read back together.
                var journaled: [(index: Int, segment: WriteJournal.Segment, offset: Int64)] = []
                for i in 0..<count {
                    let sb = sourceOffset / bs + b + i
                    let (d, root): (Dirty?, ImageRoot) = stateLock.withLock { (src.dirty[sb] ?? src.frozen[sb], src.root) }
                    let w: BlockWrite
                    switch d?.kind {
                    case .zero?: w = .zero
                    case .ref(let seg, let off)?:
                        journaled.append((writes.count, seg, off))
                        w = .zero
                    case .data?:
                        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(bs), alignment: 4096)
                        held.append(buf)
                        try readWholeBlock(src, sb, into: buf)
                        w = .bytes(UnsafeRawBufferPointer(buf))
                    case nil:
                        let r = try store.blockRef(root, sb)
                        w = r.isZero ? .zero : .ref(r)
                    }
                    writes.append((targetOffset / bs + b + i, w))
                }
                for (j, r) in try journalRefs(journaled.map { ($0.segment, $0.offset) }).enumerated() {
                    writes[journaled[j].index].1 = .ref(r)
                }
                dst.writeLock.lock()
                do {
                    try append(dst, writes, sizeAfter: max(stateLock.withLock { dst.liveSize }, targetOffset + (b + count) * bs))
                } catch { dst.writeLock.unlock(); throw error }
                dst.writeLock.unlock()
                b += count
            }
            done = whole * bs
        }
        // The rest byte by byte.
        let chunk = 1 << 20
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buf.deallocate() }
        while done < len {
            let want = Int(min(UInt64(chunk), len - done))
            let got = try read(sourceID, offset: sourceOffset + done, into: UnsafeMutableRawBufferPointer(rebasing: buf[0..<want]))
            if got == 0 { break }
            _ = try write(targetID, offset: targetOffset + done, data: UnsafeRawBufferPointer(rebasing: buf[0..<got]))
            done += UInt64(got)
        }
        return done
    }
}
