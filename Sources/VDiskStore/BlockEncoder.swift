import Dispatch
import Foundation

/// Stores a batch of blocks the fast way: zero blocks found without hashing, SHA-256 and
/// LZ4 spread over every core, dedup and appends serial. Used by import and by the
/// mount's flusher.
final class BlockEncoder {
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
    private let workers = max(1, min(8, ProcessInfo.processInfo.activeProcessorCount))

    /// An encoder for batches of up to `capacity` blocks of `blockSize` bytes.
    init(blockSize: Int, capacity: Int) {
        self.blockSize = blockSize
        self.capacity = capacity
        bound = Compression.bound(blockSize)
        packed = .allocate(byteCount: capacity * bound, alignment: 16)
        hashes = Array(repeating: .zero, count: capacity)
        codecs = Array(repeating: .raw, count: capacity)
        lengths = Array(repeating: 0, count: capacity)
    }

    deinit { packed.deallocate() }

    /// Stores `count` consecutive blocks from `blocks`; returns their refs in order.
    func store(_ blocks: UnsafeRawBufferPointer, count: Int, into store: Store, tally: inout Tally) throws -> [ChunkRef] {
        precondition(count <= capacity && blocks.count >= count * blockSize)
        let bs = blockSize, workers = self.workers
        func block(_ i: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: blocks[(i * bs)..<((i + 1) * bs)]) }
        hashes.withUnsafeMutableBufferPointer { hp in
            DispatchQueue.concurrentPerform(iterations: min(workers, count)) { w in
                var i = w
                while i < count {
                    let b = block(i)
                    hp[i] = isAllZero(b) ? .zero : ChunkHash.of(b)
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
        let bound = self.bound, packed = self.packed
        codecs.withUnsafeMutableBufferPointer { cp in
            lengths.withUnsafeMutableBufferPointer { lp in
                DispatchQueue.concurrentPerform(iterations: min(workers, max(fresh.count, 1))) { w in
                    var k = w
                    while k < fresh.count {
                        let out = UnsafeMutableRawBufferPointer(rebasing: packed[(k * bound)..<((k + 1) * bound)])
                        (cp[k], lp[k]) = Compression.compress(block(fresh[k]), into: out)
                        k += workers
                    }
                }
            }
        }
        for (k, i) in fresh.enumerated() {
            let payload = UnsafeRawBufferPointer(rebasing: packed[(k * bound)..<(k * bound + lengths[k])])
            refs[i] = try store.storeEncoded(hash: hashes[i], kind: .data, codec: codecs[k], rawLength: bs, payload: payload)
            tally.new += 1
            tally.newStoredBytes += UInt64(lengths[k] + PackFormat.recordHeaderSize)
        }
        for (i, j) in copies { refs[i] = refs[j] }
        try store.flushIndexIfLarge()
        return refs
    }
}
