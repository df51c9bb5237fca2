import Dispatch
import Foundation

/// Stores a batch of blocks the fast way: zero blocks found without hashing, SHA-256 and
/// LZ4 spread over every core, dedup and appends serial. Used by import and by the
/// mount's flusher.
///
/// With grouping on (import into a store that takes grouped records), new blocks that lie
/// close together in the image are compressed together, up to ``groupBytes`` at a time,
/// into one grouped record: LZ4 finds more to reuse in 32 KiB than in 4 KiB (about 9 %
/// smaller on the test images), and a sequential read decodes each group once.
final class BlockEncoder {
    /// Raw bytes of a grouped record at most, by default (so at most 8 chunks of 4 KiB;
    /// blocks of 32 KiB and more are not grouped). See ``Importer/defaultGroupBytes``.
    static var groupBytes: Int { Importer.defaultGroupBytes }
    /// Members of a group lie within this many of the group's blocks from its first (so a
    /// read of a stretch of the image decodes few groups that reach outside it).
    static let groupSpanFactor = 4

    /// Counts of what a batch held.
    struct Tally {
        var zero: UInt64 = 0
        var duplicate: UInt64 = 0
        var new: UInt64 = 0
        var newStoredBytes: UInt64 = 0
    }

    let blockSize: Int
    let capacity: Int
    private let bound: Int
    private let packed: UnsafeMutableRawBufferPointer
    private var hashes: [ChunkHash]
    private var codecs: [Codec]
    private var lengths: [Int]
    /// Where non-adjacent members of a group are gathered before compression.
    private let gather: UnsafeMutableRawBufferPointer
    /// Chunks per group at most (1: no groups).
    private let groupMembers: Int
    private let workers = max(1, min(8, ProcessInfo.processInfo.activeProcessorCount))

    /// An encoder for batches of up to `capacity` blocks of `blockSize` bytes; `groupBytes`
    /// > 0 lets it write grouped records of up to that many raw bytes (see above).
    init(blockSize: Int, capacity: Int, groupBytes: Int = 0) {
        self.blockSize = blockSize
        self.capacity = capacity
        groupMembers = max(1, min(PackFormat.maxGroupMembers, groupBytes / blockSize))
        let grouping = groupMembers > 1
        // A group of n members needs 32 (n - 1) + bound(n × blockSize) ≤ n × (bound + 32).
        bound = Compression.bound(blockSize) + (grouping ? 32 : 0)
        packed = .allocate(byteCount: capacity * bound, alignment: 16)
        gather = .allocate(byteCount: grouping ? capacity * blockSize : 0, alignment: 16)
        hashes = Array(repeating: .zero, count: capacity)
        codecs = Array(repeating: .raw, count: capacity)
        lengths = Array(repeating: 0, count: capacity)
    }

    deinit { packed.deallocate(); gather.deallocate() }

    /// Stores `count` consecutive blocks from `blocks`; returns their refs in order. Blocks
    /// `knownZero` marks are zero blocks whatever `blocks` holds there (free blocks import
    /// did not read).
    func store(_ blocks: UnsafeRawBufferPointer, count: Int, into store: Store, tally: inout Tally,
               knownZero: UnsafeBufferPointer<Bool>? = nil) throws -> [ChunkRef] {
        precondition(count <= capacity && blocks.count >= count * blockSize)
        let bs = blockSize, workers = self.workers
        func block(_ i: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: blocks[(i * bs)..<((i + 1) * bs)]) }
        hashes.withUnsafeMutableBufferPointer { hp in
            DispatchQueue.concurrentPerform(iterations: min(workers, count)) { w in
                var i = w
                while i < count {
                    let b = block(i)
                    hp[i] = knownZero?[i] == true || isAllZero(b) ? .zero : ChunkHash.of(b)
                    i += workers
                }
            }
        }
        var refs = [ChunkRef](repeating: .zero, count: count)
        var fresh: [Int] = []
        var firstInBatch: [ChunkHash: Int] = [:]
        var copies: [(Int, Int)] = []
        for i in 0..<count {
            let h = hashes[i]
            if h.isZero { tally.zero += 1; continue }
            if let ref = store.existing(h) { refs[i] = ref; tally.duplicate += 1; continue }
            if let j = firstInBatch[h] { copies.append((i, j)); tally.duplicate += 1; continue }
            firstInBatch[h] = i
            fresh.append(i)
        }
        // Groups: runs of `fresh` (indices into it) compressed together; each group's output
        // starts at its first member's slot of `packed`.
        var groups: [Range<Int>] = []
        let most = groupMembers
        var k = 0
        while k < fresh.count {
            var e = k + 1
            while e < fresh.count, e - k < most, fresh[e] - fresh[k] < most * Self.groupSpanFactor { e += 1 }
            groups.append(k..<e)
            k = e
        }
        let bound = self.bound, packed = self.packed, gather = self.gather
        codecs.withUnsafeMutableBufferPointer { cp in
            lengths.withUnsafeMutableBufferPointer { lp in
                hashes.withUnsafeBufferPointer { hp in
                    DispatchQueue.concurrentPerform(iterations: min(workers, max(groups.count, 1))) { w in
                        var g = w
                        while g < groups.count {
                            let r = groups[g]
                            let k0 = r.lowerBound
                            let out = UnsafeMutableRawBufferPointer(rebasing: packed[(k0 * bound)..<(r.upperBound * bound)])
                            if r.count == 1 {
                                (cp[k0], lp[k0]) = Compression.compress(block(fresh[k0]), into: out)
                            } else {
                                // Hash table of members 1..., then the members compressed together
                                // (straight from the batch when they are adjacent there).
                                let raw: UnsafeRawBufferPointer
                                if fresh[r.upperBound - 1] - fresh[k0] == r.count - 1 {
                                    raw = UnsafeRawBufferPointer(rebasing: blocks[(fresh[k0] * bs)..<((fresh[k0] + r.count) * bs)])
                                } else {
                                    let dst = UnsafeMutableRawBufferPointer(rebasing: gather[(k0 * bs)..<(r.upperBound * bs)])
                                    for (m, k) in r.enumerated() { (dst.baseAddress! + m * bs).copyMemory(from: block(fresh[k]).baseAddress!, byteCount: bs) }
                                    raw = UnsafeRawBufferPointer(dst)
                                }
                                (cp[k0], lp[k0]) = GroupEncoding.encode(hashes: r.map { hp[fresh[$0]] }, raw: raw, into: out)
                            }
                            g += workers
                        }
                    }
                }
            }
        }
        for r in groups {
            let k0 = r.lowerBound
            let payload = UnsafeRawBufferPointer(rebasing: packed[(k0 * bound)..<(k0 * bound + lengths[k0])])
            if r.count == 1 {
                refs[fresh[k0]] = try store.storeEncoded(hash: hashes[fresh[k0]], kind: .data, codec: codecs[k0], rawLength: bs, payload: payload)
            } else {
                let members = try store.storeGroup(hashes: r.map { hashes[fresh[$0]] }, codec: codecs[k0],
                                                   rawLength: r.count * bs, payload: payload)
                for (m, k) in r.enumerated() { refs[fresh[k]] = members[m] }
            }
            tally.new += UInt64(r.count)
            tally.newStoredBytes += UInt64(lengths[k0] + PackFormat.recordHeaderSize)
        }
        for (i, j) in copies { refs[i] = refs[j] }
        try store.flushIndexIfLarge()
        return refs
    }
}

/// The payload of a grouped record (or of a one-chunk record, for a single member).
enum GroupEncoding {
    /// Bytes `encode` may write for `members` chunks of `rawLength` bytes in all.
    static func bound(members: Int, rawLength: Int) -> Int { (members - 1) * 32 + Compression.bound(rawLength) }

    /// Writes the hash table of members 1... (none for one member), then `raw` (the members
    /// back to back) compressed; returns the codec and the payload length.
    static func encode(hashes: [ChunkHash], raw: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> (Codec, Int) {
        let table = (hashes.count - 1) * 32
        for (m, h) in hashes.dropFirst().enumerated() { h.store(to: out.baseAddress! + m * 32) }
        let (codec, n) = Compression.compress(raw, into: UnsafeMutableRawBufferPointer(rebasing: out[table...]))
        return (codec, table + n)
    }
}
