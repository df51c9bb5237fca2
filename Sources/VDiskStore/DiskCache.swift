import Foundation
import Glibc
import SystemPackage

/// A local disk cache of pack records, between the in-memory caches and the packs (which on
/// a remote backend are a network round trip away): `vdiskfs mount --disk-cache DIR
/// --disk-cache-size SIZE`. Copy-on-read: the read path asks it first and, on a miss, gives it
/// the record it fetched from the pack. Thread-safe.
///
/// **On disk.** `DIR/lock` (flock: one process per directory) and 16 segment files of
/// `capacity / 16` bytes at most, used as a ring (see ``Segment``). Records are stored
/// verbatim, exactly the pack's bytes (header and compressed payload), appended to the
/// newest segment. Total bytes on disk never exceed the capacity.
///
/// **Eviction: a segmented FIFO with reinsertion on hit, an approximation of LRU.** When the
/// newest segment is full, the oldest is truncated and becomes the newest: its entries go all
/// at once. A hit on an entry in the oldest quarter of the ring (12 or more segments old)
/// appends it again to the newest segment: an entry read at least once per quarter turn of
/// the ring (capacity / 4 bytes of writes) is never evicted by the ring, one read less often survives if
/// a read falls in that last quarter, and a hit entry is written again at most once per
/// 3/4 turn. (Simulated against true LRU on Zipf, uniform and hot-set-plus-scan workloads, its
/// hit rate is 0 to 5 points lower; reinserting from the older half instead lost up to 15
/// points when the working set is near the capacity, as the copies it writes crowd the ring.)
/// The index also evicts single entries: a full bucket of the table evicts its oldest entry
/// (see ``Index``); the record's bytes stay as dead space in its segment until that is recycled.
///
/// **Memory.** The index is a fixed table of 16-byte slots (hash bits, kind, generation,
/// offset, stored length), one slot per `bytesPerEntry` (default 2 KiB) of capacity, rounded
/// up to a multiple of 8, allocated once at open: **16 bytes per cached entry, 8 MiB per GiB
/// of capacity** (0.78%; a 100 GiB cache: 800 MiB), whatever is cached. Besides it: 17 file
/// descriptors and a few hundred bytes of bookkeeping; while opening, one scan buffer of
/// 4 MiB plus the largest cacheable record (at most 8 MiB), freed before `init` returns;
/// per lookup, one buffer of the record's size (on the stack for small records). With more
/// than one record per 2 KiB of capacity (records averaging under 2 KiB), the table rather
/// than the bytes limits what is cached.
///
/// **Verified reads.** Every record served passes `PackReader.checked` against the hash,
/// stored length and kind asked for (whole record, crc32c over header and payload); the
/// location (pack, offset) is not compared, as a repack moves records. A record that fails
/// is dropped from the index, counted, logged once through `log(_:)` (the first 100 drops;
/// later ones are only counted), and the lookup is a miss: the caller reads the pack, and may
/// insert the record again. Nothing unverified is ever returned.
///
/// **Concurrency.** One lock guards the index; no I/O is done under it. A lookup takes it to
/// find the entry, reads the record with `pread` outside it, and takes it again to check that
/// the entry's segment was not recycled meanwhile: a read racing with the recycling of its
/// segment (which may see the new generation's bytes, or a truncated file) is then a plain
/// miss, even if the bytes happen to verify. Writes reserve space under the lock, write
/// outside it, and publish the entry only when the write is complete; a segment is not
/// recycled while writes reserved in it are in flight.
///
/// **Restarts.** Opening scans the segments, oldest generation first, and rebuilds the index:
/// it skips records failing their crc32c (stepping over them by their stored length; should
/// that be what is damaged, the scan almost surely stops at the next step, finding no record
/// header there) and stops at a torn tail, which it truncates. Nothing is fsynced: after a
/// crash at most the tail of a segment is lost, and what a crash leaves garbled is caught by
/// the check on read. Opening reads every cached byte once, sequentially: about 1 s per GiB
/// cached from the page cache (measured 0.4 to 1.4 GB/s on a busy 2-core host), the disk's
/// read rate otherwise.
///
/// **Failures.** Writes are best effort. A failed write (a full disk, an I/O error) is logged
/// once, seals the newest segment, and pauses inserts for `retryInterval` (30 s); the next
/// write after that recycles a segment, so a cache larger than its disk settles at what fits.
/// A lookup never fails: a read error drops the entry, as a damaged record does.
public final class DiskCache: @unchecked Sendable {
    /// Counters since open.
    public struct Statistics: Sendable, Equatable {
        /// Lookups that returned a verified record.
        public var hits = 0
        /// Lookups that returned nil (absent, dropped, or raced with recycling).
        public var misses = 0
        /// Bytes of the segment files: headers and every record written since each segment's
        /// last recycling, live or not. At most the capacity.
        public var bytes: Int64 = 0
        /// Entries a lookup can find.
        public var entries = 0
        /// Entries dropped because their record failed its check or could not be read, and
        /// records skipped by the scan at open because they fail their checksum.
        public var dropped = 0
        /// Records written (inserts and re-appended hits).
        public var written = 0
        /// Hits re-appended to the newest segment.
        public var promoted = 0
        /// Inserts not written: writes paused after a failure, a record too large or not
        /// matching its ref, or no segment free to recycle at that moment.
        public var skipped = 0
    }

    static let segmentCount = 16
    /// A hit this many generations older than the newest (the oldest quarter) is appended again.
    static let promotionAge: UInt64 = 12
    public static let minimumCapacity: Int64 = 1 << 20
    public static let maximumCapacity: Int64 = Index.maxOffset * Int64(segmentCount)

    public let directory: String
    public let capacityBytes: Int64
    /// Largest size a segment file reaches.
    let segmentSize: Int64
    /// Records with a longer payload are not cached: min(4 MiB, a quarter of a segment).
    let maxStoredLength: Int

    private let lockFile: FileDescriptor
    private let segments: [FileDescriptor]

    private struct State {
        var index: Index
        /// The newest segment is being truncated and given its header: no appends.
        var rotating = false
        /// Writes failed: none until `pausedUntil` (monotonic nanoseconds).
        var failing = false
        var pausedUntil: UInt64 = 0
        var retryInterval: UInt64 = 30_000_000_000
        var stats = Statistics()
        var droppedLines = 0
        /// Lookups whose segment was recycled while they read (counted as misses too).
        var raced = 0
    }
    private let state: Locked<State>
    /// Lines logged for dropped entries, at most; further drops are only counted.
    static let maxDropLines = 100

    /// Opens (creating if needed) the cache in `directory`, holding at most `capacityBytes`
    /// bytes of segment files, and rebuilds its index from what is there. `bytesPerEntry`
    /// sizes the index (one 16-byte slot per that many bytes of capacity).
    public init(directory: String, capacityBytes: Int64, bytesPerEntry: Int = 2048) throws {
        guard capacityBytes >= Self.minimumCapacity, capacityBytes <= Self.maximumCapacity else {
            throw StoreError.invalidArgument("disk cache size must be between 1 MiB and 16 TiB (got \(capacityBytes) bytes)")
        }
        guard bytesPerEntry >= 64 else { throw StoreError.invalidArgument("disk cache: bytes per entry must be at least 64") }
        self.directory = directory
        self.capacityBytes = capacityBytes
        segmentSize = capacityBytes / Int64(Self.segmentCount)
        maxStoredLength = min(4 << 20, Int(segmentSize - Int64(Segment.headerSize)) / 4 - PackFormat.recordHeaderSize)
        try FileIO.makeDirectory(directory)
        lockFile = try Self.lock(directory)
        var opened: [FileDescriptor] = []
        do {
            for i in 0..<Self.segmentCount {
                opened.append(try FileIO.open(directory + "/" + Segment.fileName(i), .readWrite, options: [.create],
                                              permissions: [.ownerReadWrite], context: "open disk cache segment"))
            }
        } catch {
            for fd in opened { try? fd.close() }
            try? lockFile.close()
            throw error
        }
        segments = opened
        let slots = Int((capacityBytes + Int64(bytesPerEntry) - 1) / Int64(bytesPerEntry))
        var index = Index(slots: slots, segments: Self.segmentCount)
        let damaged = Self.load(&index, segments: opened, directory: directory, segmentSize: segmentSize, maxStoredLength: maxStoredLength)
        var s = State(index: index)
        s.stats.dropped = damaged
        state = Locked(s)
        if damaged > 0 { log("disk cache \(directory): skipped \(damaged) damaged record\(damaged == 1 ? "" : "s") while opening") }
    }

    deinit {
        state.withLock { $0.index.deallocate() }
        for fd in segments { try? fd.close() }
        try? lockFile.close()
    }

    /// Counters, and the bytes and entries held now.
    public var statistics: Statistics {
        state.withLock { s in
            var st = s.stats
            st.bytes = s.index.totalBytes
            st.entries = s.index.totalEntries
            return st
        }
    }

    /// How long inserts pause after a failed write (default 30 s).
    var retryInterval: Double {
        get { state.withLock { Double($0.retryInterval) / 1e9 } }
        set {
            state.withLock { s in
                s.retryInterval = UInt64(max(0, newValue) * 1e9)
                s.pausedUntil = min(s.pausedUntil, Self.now() + s.retryInterval)
            }
        }
    }

    /// Called by a lookup between finding its entry and reading it (tests: a recycling race).
    /// Set only while no lookup runs.
    var afterFindForTesting: (() -> Void)?

    /// Lookups that missed because their segment was recycled while they read.
    var racedLookups: Int { state.withLock { $0.raced } }

    /// Bytes the index table takes (allocated at open; fixed).
    public var indexBytes: Int { state.withLock { $0.index.tableBytes } }

    // MARK: lookup

    /// The record for `ref` (header and payload, as in the pack), verified with
    /// `PackReader.checked` against `ref.hash`, its stored length and `kind`; nil on a miss
    /// or when a damaged entry was dropped.
    public func record(for ref: ChunkRef, kind: RecordKind) -> [UInt8]? {
        withRecord(for: ref, kind: kind) { record, _ in Array(record) }
    }

    /// Calls `body` with the verified record for `ref` and its header, in a temporary buffer
    /// (valid only during the call), and returns its result; nil (without calling `body`) on
    /// a miss or when a damaged entry was dropped. What `body` throws is passed on.
    func withRecord<T>(for ref: ChunkRef, kind: RecordKind,
                       _ body: (UnsafeRawBufferPointer, PackFormat.RecordHeader) throws -> T) rethrows -> T? {
        // Records of one chunk only: a member of a grouped record is always a miss.
        guard !ref.location.isGrouped else { return nil }
        let stored = Int(ref.location.storedLength)
        let found: Index.Found? = state.withLock { s in
            // A different stored length (the record was re-encoded) is a miss: the insert
            // that follows replaces the entry.
            guard let f = s.index.find(ref.hash, kind), f.storedLength == stored else {
                s.stats.misses += 1
                return nil
            }
            return f
        }
        guard let found else { return nil }
        afterFindForTesting?()
        return try withUnsafeTemporaryAllocation(byteCount: PackFormat.recordHeaderSize + stored, alignment: 16) { buffer -> T? in
            switch read(found, ref, kind, into: buffer) {
            case .hit(let header, let promote):
                let record = UnsafeRawBufferPointer(buffer)
                let result = try body(record, header)
                if promote { _ = append(record, ref.hash, kind, storedLength: stored, promotion: true) }
                return result
            case .miss:
                return nil
            }
        }
    }

    private enum Outcome { case hit(PackFormat.RecordHeader, promote: Bool), miss }

    /// Reads the entry `found` for `ref` into `buffer` (its record's size) and checks it;
    /// drops it if it is damaged. Counts the hit or miss.
    private func read(_ found: Index.Found, _ ref: ChunkRef, _ kind: RecordKind, into buffer: UnsafeMutableRawBufferPointer) -> Outcome {
        let verdict: Verdict
        do {
            let n = try segments[found.segment].readFully(into: buffer, at: found.offset)
            verdict = Self.judge(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), ref, kind)
        } catch {
            verdict = .damaged("cannot be read (\(error))")
        }
        let (outcome, line): (Outcome, Int) = state.withLock { s in
            // Recycled while we read: whatever was read belongs to no entry of ours.
            guard s.index.generation[found.segment] == found.generation else {
                s.stats.misses += 1
                s.raced += 1
                return (.miss, 0)
            }
            switch verdict {
            case .good(let header):
                s.stats.hits += 1
                return (.hit(header, promote: s.index.activeGeneration - found.generation >= Self.promotionAge), 0)
            case .otherRecord:
                s.stats.misses += 1
                return (.miss, 0)
            case .damaged:
                s.stats.misses += 1
                guard s.index.remove(found) else { return (.miss, 0) }  // another reader dropped it first
                s.stats.dropped += 1
                s.droppedLines += 1
                return (.miss, s.droppedLines)
            }
        }
        if case .damaged(let why) = verdict, line > 0, line <= Self.maxDropLines {
            log("disk cache \(directory): dropped the cached \(Self.describe(kind)) \(ref.hash.short) (\(why)); it is read from the pack instead"
                + (line == Self.maxDropLines ? " (further drops are only counted)" : ""))
        }
        return outcome
    }

    private enum Verdict {
        case good(PackFormat.RecordHeader)
        /// A whole, sound record of another hash: the index's key bits matched by chance.
        case otherRecord
        case damaged(String)
    }

    /// The check of a record read from a segment, for `ref` and `kind`.
    private static func judge(_ record: UnsafeRawBufferPointer, _ ref: ChunkRef, _ kind: RecordKind) -> Verdict {
        if let header = try? PackReader.checked(record, ref, kind: kind) { return .good(header) }
        guard record.count == ref.location.recordLength else { return .damaged("it is cut short") }
        guard let h = PackFormat.loadRecordHeader(record.baseAddress!), h.storedLength == Int(ref.location.storedLength) else {
            return .damaged("no record header there")
        }
        let sound = PackFormat.recordChecksumMatches(record, header: h)
        if h.hash != ref.hash && sound { return .otherRecord }
        if !sound { return .damaged("it fails its checksum") }
        return .damaged("it has the wrong kind")
    }

    private static func describe(_ kind: RecordKind) -> String {
        switch kind {
        case .data: return "chunk"
        case .tree: return "tree node"
        case .namespace: return "namespace"
        case .snapshotTable: return "snapshot table"
        }
    }

    // MARK: insert

    /// Caches `record` (header and payload, as read from a pack) for `ref`. Best effort: it
    /// is checked first (as a lookup would) and skipped if it does not check out, is too
    /// large, or writes are paused after a failure; a failed write is logged once and never
    /// thrown. Returns whether the record was written.
    @discardableResult
    public func insert(_ ref: ChunkRef, kind: RecordKind, record: UnsafeRawBufferPointer) -> Bool {
        let stored = Int(ref.location.storedLength)
        guard !ref.isZero, !ref.location.isGrouped, stored <= maxStoredLength, (try? PackReader.checked(record, ref, kind: kind)) != nil else {
            state.withLock { $0.stats.skipped += 1 }
            return false
        }
        return append(record, ref.hash, kind, storedLength: stored, promotion: false)
    }

    /// Appends a checked record to the newest segment and publishes it.
    private func append(_ record: UnsafeRawBufferPointer, _ hash: ChunkHash, _ kind: RecordKind,
                        storedLength: Int, promotion: Bool) -> Bool {
        let length = Int64(record.count)
        enum Step { case done, write(segment: Int, generation: UInt64, offset: Int64), rotate(segment: Int, generation: UInt64) }
        /// Takes `length` bytes at the end of the newest segment, or starts recycling the
        /// oldest when it is full. Under the lock.
        func reserve(_ s: inout State) -> Step {
            if let f = s.index.find(hash, kind), f.storedLength == storedLength,
               !promotion || s.index.activeGeneration - f.generation < Self.promotionAge {
                return .done  // there already (another reader inserted or promoted it)
            }
            if s.failing && Self.now() < s.pausedUntil { s.stats.skipped += 1; return .done }
            if s.rotating { s.stats.skipped += 1; return .done }
            let active = s.index.activeSegment
            if s.index.generation[active] != 0 && s.index.activeOffset + length <= segmentSize {
                let offset = s.index.activeOffset
                s.index.activeOffset += length
                s.index.bytes[active] += length
                s.index.pending[active] += 1
                return .write(segment: active, generation: s.index.activeGeneration, offset: offset)
            }
            let next = s.index.activeGeneration + 1
            let victim = Int(next & UInt64(Self.segmentCount - 1))
            // A write reserved a whole turn ago is still in flight there: let it finish.
            guard s.index.pending[victim] == 0 else { s.stats.skipped += 1; return .done }
            s.index.recycle(victim, generation: next)
            s.index.activeGeneration = next
            s.index.activeOffset = Int64(Segment.headerSize)
            s.rotating = true
            return .rotate(segment: victim, generation: next)
        }

        var step = state.withLock { reserve(&$0) }
        while case .rotate(let segment, let generation) = step {
            // Truncate the recycled segment and give it its new header, outside the lock:
            // lookups still reading its old records will see the generation change and miss.
            let fd = segments[segment]
            var failure: (any Error)?
            do {
                try fd.truncate(to: 0)
                try Segment.encodeHeader(index: segment, generation: generation).withUnsafeBytes { (b) throws in try fd.writeFully(b, at: 0) }
            } catch { failure = error }
            step = state.withLock { s in
                s.rotating = false
                guard failure == nil else {
                    s.index.activeOffset = segmentSize  // no appends to a segment without its header
                    return .done
                }
                s.index.bytes[segment] = Int64(Segment.headerSize)
                s.index.activeOffset = Int64(Segment.headerSize)
                return reserve(&s)
            }
            if let failure { writeFailed(failure, segment: nil) }
        }
        guard case .write(let segment, let generation, let offset) = step else { return false }
        do {
            try segments[segment].writeFully(record, at: offset)
        } catch {
            writeFailed(error, segment: segment)
            return false
        }
        let resumed = state.withLock { s -> Bool in
            s.index.pending[segment] -= 1
            s.index.publish(hash, kind, generation: generation, offset: offset, storedLength: storedLength)
            s.stats.written += 1
            if promotion { s.stats.promoted += 1 }
            defer { s.failing = false }
            return s.failing
        }
        if resumed { log("disk cache \(directory): writing again") }
        return true
    }

    /// After a failed write (`segment`: where it was reserved): seal the newest segment,
    /// pause writes, and log it if writes were working until now.
    private func writeFailed(_ error: any Error, segment: Int?) {
        let first = state.withLock { s -> Bool in
            if let segment { s.index.pending[segment] -= 1 }
            s.index.activeOffset = segmentSize
            s.pausedUntil = Self.now() + s.retryInterval
            s.stats.skipped += 1
            defer { s.failing = true }
            return !s.failing
        }
        guard first else { return }
        let why = (error as? Errno).map { $0 == .noSpace || $0 == .diskQuotaExceeded ? "no space left on the device" : "\($0)" } ?? "\(error)"
        log("disk cache \(directory): cannot write (\(why)); caching paused, what is cached is still served")
    }

    static func now() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }

    // MARK: open

    /// Takes `directory/lock` for this process, or throws naming who has it.
    private static func lock(_ directory: String) throws -> FileDescriptor {
        let path = directory + "/lock"
        let fd = try FileIO.open(path, .readWrite, options: [.create], permissions: [.ownerReadWrite, .groupRead, .otherRead],
                                 context: "open disk cache lock")
        let got: Bool
        do { got = try fd.tryLock(exclusive: true) } catch { try? fd.close(); throw StoreError.system(error, "lock \(path)", path: path) }
        guard got else {
            let holder = (try? FileIO.readAll(path)).map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
            try? fd.close()
            throw StoreError.busy(name: "disk cache \(directory) (in use by \(holder.isEmpty ? "another process" : holder))")
        }
        try? fd.truncate(to: 0)
        _ = try? Array("pid \(getpid())\n".utf8).withUnsafeBytes { (b) throws in try fd.writeFully(b, at: 0) }
        return fd
    }

    /// Rebuilds `index` from the segment files; returns how many damaged records were skipped.
    private static func load(_ index: inout Index, segments: [FileDescriptor], directory: String,
                             segmentSize: Int64, maxStoredLength: Int) -> Int {
        var found: [(segment: Int, generation: UInt64)] = []
        for (i, fd) in segments.enumerated() {
            if let g = Segment.readGeneration(fd, index: i) { found.append((i, g)) }
        }
        let newest = found.map(\.generation).max() ?? 0
        // The ring holds at most 16 consecutive generations; anything older is a leftover.
        let kept = found.filter { $0.generation + UInt64(segmentCount) > newest }.sorted { $0.generation < $1.generation }
        var damaged = 0
        for (segment, generation) in kept {
            let fd = segments[segment]
            index.generation[segment] = generation
            do {
                let r = try Segment.scan(fd, limit: segmentSize, maxStoredLength: maxStoredLength) { offset, header in
                    index.publish(header.hash, header.kind, generation: generation, offset: offset, storedLength: header.storedLength)
                }
                damaged += r.damaged
                index.bytes[segment] = r.end
                if (try? fd.byteSize()) != r.end { try? fd.truncate(to: r.end) }  // the torn tail goes
            } catch {
                log("disk cache \(directory): cannot read \(Segment.fileName(segment)) (\(error)); its entries are dropped")
                index.generation[segment] = 0
                index.entries[segment] = 0
            }
        }
        // Segments holding nothing usable are emptied; they are recycled like the others.
        for (i, fd) in segments.enumerated() where index.generation[i] == 0 { try? fd.truncate(to: 0) }
        // Appends continue at the end of the newest segment; with nothing cached, the first
        // append recycles the segment after it (segment 1, generation 1, in a new cache).
        index.activeGeneration = newest
        let active = index.activeSegment
        index.activeOffset = index.generation[active] != 0 ? index.bytes[active] : segmentSize
        return damaged
    }
}
