extension DiskCache {
    /// The disk cache's in-memory index: a fixed-size set-associative table from (hash, kind)
    /// to a place in a segment, and the ring's bookkeeping (each segment's generation, bytes,
    /// entries, writes in flight). Not thread-safe: ``DiskCache`` keeps it under its lock.
    ///
    /// A slot is 16 bytes, two words:
    ///
    ///     word 0:  hash bits 29 | kind 3 | generation 31 | used 1
    ///     word 1:  offset in segment 40 | stored length 24
    ///
    /// The bucket (8 slots) is chosen by the hash's second word, the 29 key bits are the top
    /// of its first: a slot names its hash by 29 + log2(buckets) bits, not all 256. A false
    /// match (about 8 in 2^29 lookups of an absent hash share a bucket and key bits with a
    /// present one) costs one read, which the full check finds to hold another hash: a miss.
    ///
    /// Segment `g % 16` holds generation `g` (the ring), so a slot's generation names its
    /// segment, and a slot is live only while that segment still holds that generation:
    /// recycling a segment invalidates all of its slots at once, without finding them.
    /// Stale slots are reused by later inserts. Generations are kept to 31 bits in slots;
    /// a slot stale for 2^31 segment turns could alias a live generation, and the read
    /// check would then find another record there and drop it.
    struct Index {
        static let ways = 8
        static let generationMask: UInt64 = (1 << 31) - 1
        static let maxOffset: Int64 = 1 << 40
        static let maxStoredLength = (1 << 24) - 1

        let bucketCount: Int
        private let words: UnsafeMutablePointer<UInt64>

        /// Per segment: the generation it holds (0: none), its bytes on disk (header and every
        /// record written to it, live or not), its live slots, and writes reserved in it but
        /// not yet finished (a segment with writes in flight is not recycled).
        var generation: [UInt64]
        var bytes: [Int64]
        var entries: [Int]
        var pending: [Int]
        /// The newest generation, whose segment takes appends at `activeOffset`.
        var activeGeneration: UInt64 = 0
        var activeOffset: Int64 = 0

        /// A live slot found for a key.
        struct Found {
            var slot: Int
            var word0: UInt64
            var word1: UInt64
            var generation: UInt64  // full, from `generation[segment]`
            var segment: Int { Int((word0 >> 1) & UInt64(DiskCache.segmentCount - 1)) }
            var offset: Int64 { Int64(word1 >> 24) }
            var storedLength: Int { Int(word1 & UInt64(Index.maxStoredLength)) }
        }

        /// An index of at least `slots` slots (rounded up to whole buckets of 8).
        init(slots: Int, segments: Int) {
            bucketCount = max(1, (slots + Self.ways - 1) / Self.ways)
            let n = bucketCount * Self.ways * 2
            words = .allocate(capacity: n)
            words.initialize(repeating: 0, count: n)
            generation = Array(repeating: 0, count: segments)
            bytes = Array(repeating: 0, count: segments)
            entries = Array(repeating: 0, count: segments)
            pending = Array(repeating: 0, count: segments)
        }

        func deallocate() { words.deallocate() }

        var slotCount: Int { bucketCount * Self.ways }
        /// Bytes the table takes (allocated once, at open).
        var tableBytes: Int { slotCount * 16 }
        var totalEntries: Int { entries.reduce(0, +) }
        var totalBytes: Int64 { bytes.reduce(0, +) }
        var activeSegment: Int { Int(activeGeneration & UInt64(DiskCache.segmentCount - 1)) }

        @inline(__always)
        private static func key(_ hash: ChunkHash, _ kind: RecordKind) -> UInt64 {
            (hash.w0 >> 35) << 3 | UInt64(kind.rawValue & 7)
        }

        @inline(__always)
        private func bucketStart(_ hash: ChunkHash) -> Int {
            Int(hash.w1.multipliedFullWidth(by: UInt64(bucketCount)).high) * Self.ways
        }

        /// The full generation a used slot's word 0 names, when its segment still holds it.
        @inline(__always)
        private func liveGeneration(_ word0: UInt64) -> UInt64? {
            guard word0 & 1 == 1 else { return nil }
            let g = (word0 >> 1) & Self.generationMask
            let full = generation[Int(g) & (DiskCache.segmentCount - 1)]
            return full & Self.generationMask == g && full != 0 ? full : nil
        }

        /// The live slot for (hash, kind), if any.
        func find(_ hash: ChunkHash, _ kind: RecordKind) -> Found? {
            let key = Self.key(hash, kind)
            let start = bucketStart(hash)
            for slot in start..<(start + Self.ways) {
                let w0 = words[2 * slot]
                guard w0 >> 32 == key, let g = liveGeneration(w0) else { continue }
                return Found(slot: slot, word0: w0, word1: words[2 * slot + 1], generation: g)
            }
            return nil
        }

        /// Records that (hash, kind) is at `offset` in the segment of `generation` (which must
        /// be live). Replaces the key's live slot if there is one, else takes a free or stale
        /// slot, else evicts the bucket's oldest entry.
        mutating func publish(_ hash: ChunkHash, _ kind: RecordKind, generation gen: UInt64, offset: Int64, storedLength: Int) {
            precondition(offset < Self.maxOffset && storedLength <= Self.maxStoredLength)
            let key = Self.key(hash, kind)
            let start = bucketStart(hash)
            var target = -1
            var free = -1
            var oldest = -1
            var oldestGeneration = UInt64.max
            for slot in start..<(start + Self.ways) {
                let w0 = words[2 * slot]
                guard let g = liveGeneration(w0) else {
                    if free < 0 { free = slot }
                    continue
                }
                if w0 >> 32 == key { target = slot; break }
                if g < oldestGeneration { oldestGeneration = g; oldest = slot }
            }
            if target < 0 { target = free >= 0 ? free : oldest }
            if let g = liveGeneration(words[2 * target]) { entries[Int(g) & (DiskCache.segmentCount - 1)] -= 1 }
            words[2 * target] = key << 32 | (gen & Self.generationMask) << 1 | 1
            words[2 * target + 1] = UInt64(offset) << 24 | UInt64(storedLength)
            entries[Int(gen) & (DiskCache.segmentCount - 1)] += 1
        }

        /// Frees the slot `found` was read from, if it still holds the same entry.
        @discardableResult
        mutating func remove(_ found: Found) -> Bool {
            guard words[2 * found.slot] == found.word0, words[2 * found.slot + 1] == found.word1,
                  liveGeneration(found.word0) != nil else { return false }
            words[2 * found.slot] = 0
            words[2 * found.slot + 1] = 0
            entries[found.segment] -= 1
            return true
        }

        /// Makes `segment` hold generation `gen` and nothing else: its slots all go stale.
        mutating func recycle(_ segment: Int, generation gen: UInt64) {
            precondition(Int(gen) & (DiskCache.segmentCount - 1) == segment && pending[segment] == 0)
            generation[segment] = gen
            entries[segment] = 0
            bytes[segment] = 0
        }
    }
}
